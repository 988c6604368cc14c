//! The HTTPS listener: one task per connection, each request authorised and
//! forwarded; a connection (and its WebSocket tunnels) is closed when its
//! caller stops being allowed (a lock: within the push, well under 1 s).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sigil_proto::v1::AppRequestRecord;
use sigil_types::{App, IdentityFields};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::{Access, Allowed, Authorized, Decision, JwtFailed, Memo};
use crate::audit::Auditor;
use crate::config::ProxyConfig;
use crate::headers::{Forward, forward_request, is_websocket, strip_hop_by_hop, wants_upgrade};
use crate::tls::ServerIdentity;
use crate::upstream::{Target, Upstreams};

type Body = BoxBody<Bytes, hyper::Error>;

/// What every connection shares.
pub struct Ctx {
    pub cfg: ProxyConfig,
    pub access: Arc<Access>,
    pub audit: Arc<Auditor>,
}

/// One client connection.
struct Conn {
    cert: Arc<[u8]>,
    /// (bot, instance) the certificate names, for the audit of requests
    /// refused before any decision.
    named: (String, String),
    sni: Option<String>,
    peer: std::net::SocketAddr,
    /// Apps requested on this connection: re-checked on every change.
    apps: Mutex<BTreeSet<String>>,
    /// Whether any request arrived: a connection that sends none within the
    /// header timeout is closed (a handshake alone proves nothing current —
    /// the caller may be locked — and must not hold a slot).
    used: std::sync::atomic::AtomicBool,
    /// Requests refused so far: 403, 404 or 421.
    refused: std::sync::atomic::AtomicU32,
    /// Set when the caller is no longer allowed: the connection and every
    /// tunnel opened on it close. The re-check lives while any of them does.
    kill: watch::Sender<bool>,
    /// Its own upstream connections, driven in its task.
    upstreams: Upstreams,
    /// The last decision and JWT header, reused under the same rule as the
    /// shared caches (see `Access::authorize`).
    memo: Mutex<Option<Memo>>,
}

/// Open client connections at most; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 10_000;

/// Accept connections until the listener fails.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener, id: ServerIdentity) -> anyhow::Result<()> {
    let mut snaps = ctx.access.subscribe();
    let mut ca_pem = String::new();
    let mut acceptor: Option<tokio_rustls::TlsAcceptor> = None;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // At the cap, stop accepting (the kernel's backlog queues) rather than
        // run out of descriptors.
        let slot = slots.clone().acquire_owned().await?;
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE, ECONNABORTED…: transient; back off, keep serving.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Rebuild the TLS config when the client CAs change (a rotation).
        let snap = snaps.borrow_and_update().clone();
        if snap.client_ca_pem != ca_pem || acceptor.is_none() {
            match id.config(&snap.client_ca_pem) {
                Ok(c) => {
                    acceptor = Some(tokio_rustls::TlsAcceptor::from(c));
                    ca_pem = snap.client_ca_pem.clone();
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), %peer, "refusing a connection: no TLS config yet");
                    continue;
                }
            }
        }
        let Some(acc) = acceptor.clone() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            if let Err(e) = connection(ctx, tcp, peer, acc).await {
                tracing::debug!(%peer, error = %format!("{e:#}"), "connection ended");
            }
        });
    }
}

async fn connection(
    ctx: Arc<Ctx>,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acc: tokio_rustls::TlsAcceptor,
) -> anyhow::Result<()> {
    let tls = tokio::time::timeout(ctx.cfg.timeouts.client_header.0, acc.accept(tcp)).await??;
    let (_, session) = tls.get_ref();
    let cert: Arc<[u8]> = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::from(c.as_ref()))
        .ok_or_else(|| anyhow::anyhow!("no client certificate"))?;
    let sni = session.server_name().map(str::to_ascii_lowercase);
    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
    let (upstreams, upstream_driver) = Upstreams::new(!h2);
    let conn = Arc::new(Conn {
        named: crate::caller::named_in(&cert),
        cert,
        sni,
        peer,
        apps: Mutex::default(),
        used: std::sync::atomic::AtomicBool::new(false),
        refused: std::sync::atomic::AtomicU32::new(0),
        kill: watch::channel(false).0,
        upstreams,
        memo: Mutex::default(),
    });
    {
        let (conn, idle) = (conn.clone(), ctx.cfg.timeouts.client_header.0);
        tokio::spawn(async move {
            tokio::time::sleep(idle).await;
            if !conn.used.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = conn.kill.send(true);
            }
        });
    }
    // Subscribed before the re-check starts, which ends when nothing listens.
    let mut kill = conn.kill.subscribe();
    tokio::spawn(recheck(ctx.clone(), conn.clone()));
    let svc = {
        let ctx = ctx.clone();
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(ctx, conn, req).await) }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The protocol is the one ALPN chose: no sniffing of the first bytes,
    // which has no timeout of its own.
    let mut builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.timeouts.client_header.0)
        .max_buf_size(ctx.cfg.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(ctx.cfg.max_header_bytes).unwrap_or(u32::MAX))
        // A peer that stops answering pings is gone; its streams are freed.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
    tokio::select! {
        r = served => r.map_err(|e| anyhow::anyhow!("{e}")),
        _ = kill.wait_for(|k| *k) => Ok(()),
        // Never ends: its connections close when this task ends.
        () = upstream_driver.run() => Ok(()),
    }
}

/// On every change pushed by the auth service, re-decide each app this
/// connection used; the first refusal closes it (and its tunnels).
async fn recheck(ctx: Arc<Ctx>, conn: Arc<Conn>) {
    let mut snaps = ctx.access.subscribe();
    loop {
        tokio::select! {
            r = snaps.changed() => if r.is_err() { return },
            // The connection and its tunnels are gone.
            _ = conn.kill.closed() => return,
        }
        let apps: Vec<String> = conn
            .apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let snap = ctx.access.snapshot();
        for name in apps {
            let app = snap
                .apps
                .values()
                .find(|a| a.metadata.name == name)
                .cloned();
            let allowed = match app {
                Some(app) => match ctx.access.decide(&conn.cert, &app).await {
                    Ok(Decision::Allow(_)) => true,
                    Ok(Decision::Deny { .. }) => false,
                    // Refused as an error (a certificate no CA vouches for
                    // any more, say): closed like a denial.
                    Err(e) if crate::access::is_refusal(&e) => {
                        tracing::info!(app = %name, error = %format!("{e:#}"), "re-check refused");
                        false
                    }
                    // No answer (the stream reconnecting after the auth
                    // service restarted or the proxy renewed): not a denial.
                    // Every new request still needs an answer, and the next
                    // push re-checks this connection.
                    Err(e) => {
                        tracing::debug!(app = %name, error = %format!("{e:#}"), "re-check without an answer; the connection stays");
                        true
                    }
                },
                // No longer served: nothing stays open to it.
                None => false,
            };
            if !allowed {
                tracing::info!(app = %name, "closing a connection whose caller is no longer allowed");
                let _ = conn.kill.send(true);
                return;
            }
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// How much of a request's path the audit record keeps.
const MAX_AUDITED_PATH: usize = 256;

/// What an allowed request's audit record names, copied into it only if
/// the record is kept (most allowed requests are sampled out).
#[derive(Default)]
struct Seen {
    app: Option<Arc<App>>,
    allowed: Option<Arc<Allowed>>,
}

async fn handle(ctx: Arc<Ctx>, conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    conn.used.store(true, std::sync::atomic::Ordering::Relaxed);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    // Denials: their reason and who; the rest is filled in below.
    let mut rec = AppRequestRecord::default();
    let mut seen = Seen::default();
    let resp = route(&ctx, &conn, req, &mut rec, &mut seen).await;
    let status = u32::from(resp.status().as_u16());
    // A caller sending requests for no app, the wrong one or one it may not
    // reach has nothing to gain from this connection: after a few, it is
    // closed, so a flood of refusals costs it a handshake per few requests.
    if (crate::audit::is_misdirected(status) || status == 403)
        && conn
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
            >= MAX_REFUSED_PER_CONN
    {
        tracing::info!(peer = %conn.peer, "closing a connection after {MAX_REFUSED_PER_CONN} refused requests");
        let _ = conn.kill.send(true);
    }
    if !ctx.audit.keeps(status, &rec.reason) {
        return resp;
    }
    rec.status = status;
    rec.latency_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    rec.method = method.to_string();
    // Bounded: a path is up to the header limit, and denials are recorded.
    rec.path = uri.path().chars().take(MAX_AUDITED_PATH).collect();
    if let Some(app) = seen.app {
        rec.app = app.metadata.name.clone();
    }
    if let Some(a) = seen.allowed {
        rec.bot = a.bot.clone();
        rec.instance = a.instance.clone();
        rec.spiffe_id = a.spiffe_id.clone();
    }
    ctx.audit.add(rec);
    resp
}

/// Requests for no app (404), the wrong one (421) or one refused (403) a
/// connection may make before it is closed.
const MAX_REFUSED_PER_CONN: u32 = 20;

async fn route(
    ctx: &Ctx,
    conn: &Conn,
    mut req: Request<Incoming>,
    rec: &mut AppRequestRecord,
    seen: &mut Seen,
) -> Response<Body> {
    // TRACE would echo the request, the JWT assertion included, back to the
    // caller; CONNECT would open a raw tunnel past per-request decisions.
    if req.method() == http::Method::TRACE || req.method() == http::Method::CONNECT {
        rec.reason = format!("method {} is not proxied", req.method());
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    // A body framed two ways. HTTP/1 never gets here (hyper reads it as
    // chunked, drops Content-Length and closes after the response, RFC 9112
    // 6.3), nor does HTTP/2 (no Transfer-Encoding); kept for any other path.
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && req.headers().contains_key(header::CONTENT_LENGTH)
    {
        rec.reason = "Content-Length and Transfer-Encoding together".into();
        return plain(StatusCode::BAD_REQUEST, "bad request\n");
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| crate::access::strip_port(h).to_string())
        })
        .or_else(|| conn.sni.clone())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Host must name the app the TLS session was opened for; a session
    // without SNI (a client dialling an IP address) is for no app.
    let misdirected = match &conn.sni {
        None => Some("the TLS session named no server (no SNI)".to_string()),
        Some(sni) if *sni != host => {
            Some(format!("Host {host:?} is not the TLS server name {sni:?}"))
        }
        Some(_) => None,
    };
    if let Some(why) = misdirected {
        (rec.bot, rec.instance) = conn.named.clone();
        rec.reason = why;
        return plain(StatusCode::MISDIRECTED_REQUEST, "misdirected request\n");
    }
    // One snapshot: the app and the generation its decisions are under.
    let snap = ctx.access.snapshot();
    let Some(app) = snap.apps.get(crate::access::strip_port(&host)).cloned() else {
        (rec.bot, rec.instance) = conn.named.clone();
        rec.reason = format!("no app answers for {host:?}");
        return plain(StatusCode::NOT_FOUND, "no such app\n");
    };
    seen.app = Some(app.clone());
    {
        let mut apps = conn.apps.lock().unwrap_or_else(|p| p.into_inner());
        if !apps.contains(&app.metadata.name) {
            apps.insert(app.metadata.name.clone());
        }
    }
    let authorized = ctx
        .access
        .authorize(&conn.cert, &app, snap.generation, &conn.memo)
        .await;
    let (allowed, jwt) = match authorized {
        Ok(Authorized::Allow(a, jwt)) => (a, jwt),
        Ok(Authorized::Deny {
            bot,
            instance,
            spiffe_id,
            reason,
        }) => {
            rec.bot = bot;
            rec.instance = instance;
            rec.spiffe_id = spiffe_id;
            rec.reason = reason;
            return plain(StatusCode::FORBIDDEN, "access denied\n");
        }
        Err(e) if e.downcast_ref::<JwtFailed>().is_some() => {
            tracing::warn!(error = %format!("{e:#}"), "signing the app JWT failed");
            rec.reason = format!("{e:#}");
            (rec.bot, rec.instance) = conn.named.clone();
            return plain(StatusCode::SERVICE_UNAVAILABLE, "identity unavailable\n");
        }
        Err(e) => {
            // Fail closed: no decision, no access.
            tracing::warn!(error = %format!("{e:#}"), "authorization unavailable");
            rec.reason = "authorization unavailable".into();
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "authorization unavailable\n",
            );
        }
    };
    seen.allowed = Some(allowed.clone());
    let upstream = match app.spec.upstream() {
        Ok(u) if !u.tls => u,
        _ => {
            tracing::warn!(app = %app.metadata.name, "https upstreams are not supported yet");
            return plain(StatusCode::BAD_GATEWAY, "bad gateway\n");
        }
    };
    // Only the app's `rewrite_headers` read it.
    let who = if app.spec.rewrite_headers.is_empty() {
        IdentityFields::default()
    } else {
        IdentityFields {
            name: allowed.bot.clone(),
            instance: allowed.instance.clone(),
            roles: allowed.roles.clone(),
            spiffe_id: allowed.spiffe_id.clone(),
        }
    };
    let is_upgrade = wants_upgrade(req.headers());
    if is_upgrade && !is_websocket(req.headers()) {
        rec.reason = "an upgrade to something other than WebSocket".into();
        return plain(
            StatusCode::BAD_REQUEST,
            "only WebSocket upgrades are passed through\n",
        );
    }
    let max_body = ctx.cfg.max_body_bytes;
    if let Some(len) = content_length(req.headers())
        && len > max_body
    {
        rec.reason = format!("a request body of {len} bytes (max_body_bytes: {max_body})");
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    // A body without a length (chunked) is cut where it passes the limit.
    let req = req.map(|b| Limited::new(b, usize::try_from(max_body).unwrap_or(usize::MAX)));
    let out = match forward_request(
        req,
        &app,
        &upstream,
        &Forward {
            who: &who,
            jwt: &jwt,
            host: &host,
            client_ip: conn.peer.ip(),
            upgrade: is_upgrade,
        },
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "building the upstream request");
            return plain(StatusCode::BAD_REQUEST, "bad request\n");
        }
    };
    let target = Target {
        host: &upstream.host,
        port: upstream.port,
        connect_timeout: ctx.cfg.timeouts.upstream_connect.0,
    };
    let sent = tokio::time::timeout(
        ctx.cfg.timeouts.upstream_response.0,
        conn.upstreams.send(&target, out, is_upgrade),
    )
    .await;
    let mut resp = match sent {
        Err(_) => return plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
        Ok(Err(e)) if body_over_limit(&*e) => {
            rec.reason = format!("a chunked request body over max_body_bytes ({max_body})");
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        Ok(Err(e)) => {
            tracing::warn!(app = %app.metadata.name, error = %e, "upstream failed");
            return plain(StatusCode::BAD_GATEWAY, "bad gateway\n");
        }
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !is_websocket(resp.headers()) {
        tracing::warn!(app = %app.metadata.name, "the upstream switched to something other than WebSocket");
        return plain(StatusCode::BAD_GATEWAY, "bad gateway\n");
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let kill = conn.kill.subscribe();
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, kill));
        let (parts, _) = resp.into_parts();
        return Response::from_parts(
            parts,
            http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
        );
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(|b| b.boxed())
}

/// The request's Content-Length, if it has one (hyper already refused a
/// malformed or duplicated one).
fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether forwarding failed because the request body passed the limit.
fn body_over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A WebSocket (or other upgraded) tunnel, closed with the connection's kill switch.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut kill: watch::Receiver<bool>,
) {
    let (c, u) = match (client.await, upstream.await) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::warn!(client = ?c.err(), upstream = ?u.err(), "upgrade failed");
            return;
        }
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
            tracing::debug!(result = ?r, "tunnel ended");
        }
        _ = kill.wait_for(|k| *k) => {}
    }
}
