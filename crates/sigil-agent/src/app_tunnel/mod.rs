//! `application-tunnel`: plain HTTP on a loopback port, forwarded to
//! `sigil proxy` over mTLS with the bot's identity, so a tool that cannot do
//! mTLS can reach an app. The tunnel presents a certificate
//! of its own ([`certificate`]), not the agent's renewable one. Each local
//! connection gets its own proxy connection, made with the certificate of
//! that moment and made again for the next request once it was replaced.
//!
//! Only requests addressed to the tunnel itself are forwarded: a `Host` other
//! than a loopback name or the app's (DNS rebinding) or a cross-site browser
//! request (a page making a browser on this host call the app as the bot) is
//! refused with 403.

mod certificate;

pub use certificate::follow as follow_certificate;

use std::sync::Arc;

use anyhow::Context;
use http::header::{HOST, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::config::app_tunnel::TunnelConfig;
use certificate::{Current, TunnelCert};

/// Serve `listener` for the agent's life, presenting the certificate
/// [`follow_certificate`] keeps in `current`.
pub async fn serve(listener: TcpListener, cfg: Arc<TunnelConfig>, current: Current) {
    loop {
        let local = match listener.accept().await {
            Ok((local, _)) => local,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(app = %cfg.app, error = %e, "application tunnel: accepting failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (cfg, current) = (cfg.clone(), current.clone());
        tokio::spawn(async move {
            let app = cfg.app.clone();
            if let Err(e) = connection(local, cfg, current).await {
                tracing::warn!(%app, error = %format!("{e:#}"), "application tunnel connection failed");
            }
        });
    }
}

/// The proxy connection of one local connection, and the certificate it
/// was made with.
struct Upstream {
    cert: Arc<TunnelCert>,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
}

/// Why a request cannot go through: no certificate yet, or only an expired
/// one (issuance has been failing for its whole life).
#[derive(Debug)]
struct NoCertificate(&'static str);

impl std::fmt::Display for NoCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NoCertificate {}

async fn connect(cfg: &TunnelConfig, current: &Current) -> anyhow::Result<Upstream> {
    let cert = current.borrow().clone().ok_or(NoCertificate(
        "the tunnel has no certificate yet (the agent has not joined)",
    ))?;
    if cert.expired() {
        return Err(NoCertificate(
            "the tunnel's certificate has expired and no new one could be issued",
        )
        .into());
    }
    let name = rustls_pki_types::ServerName::try_from(cfg.app.clone())?;
    let tcp = TcpStream::connect(&cfg.proxy)
        .await
        .with_context(|| format!("connecting to the proxy at {}", cfg.proxy))?;
    let _ = tcp.set_nodelay(true);
    let upstream = tokio_rustls::TlsConnector::from(cert.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS to the proxy")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    // With upgrades: a WebSocket takes the connection over (the next local
    // request then finds it closed and dials anew).
    tokio::spawn(conn.with_upgrades());
    Ok(Upstream { cert, sender })
}

/// Whether a local request is meant for this tunnel (see the module comment).
fn addressed_here(h: &http::HeaderMap, app: &str) -> bool {
    let value = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let host = value("host").unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let local = |n: &str| n.eq_ignore_ascii_case("localhost") || n == "127.0.0.1" || n == "[::1]";
    if !(local(name) || name.eq_ignore_ascii_case(app)) {
        return false;
    }
    // `same-site` too is refused: a page on another loopback port (another
    // tunnel, a local dev server) is same-site, and its `<img>` or no-cors
    // GET carries no Origin.
    if value("sec-fetch-site")
        .is_some_and(|s| !s.eq_ignore_ascii_case("same-origin") && !s.eq_ignore_ascii_case("none"))
    {
        return false;
    }
    // A browser names the page's origin: only the tunnel's own is accepted.
    match value("origin") {
        None => true,
        Some(o) => o
            .strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host)),
    }
}

async fn connection(
    local: TcpStream,
    cfg: Arc<TunnelConfig>,
    current: Current,
) -> anyhow::Result<()> {
    // Dialled on the first request addressed here, not on accept: a local
    // connection that sends nothing (or garbage) costs no handshake.
    let upstream: Arc<tokio::sync::Mutex<Option<Upstream>>> = Arc::default();
    let host = HeaderValue::from_str(&cfg.app)?;
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let (upstream, host, cfg, current) =
            (upstream.clone(), host.clone(), cfg.clone(), current.clone());
        async move {
            if !addressed_here(req.headers(), &cfg.app) {
                tracing::warn!(app = %cfg.app, "application tunnel: refused a request not addressed to it (Host, Origin or Sec-Fetch-Site)");
                return Ok(refused());
            }
            req.headers_mut().insert(HOST, host);
            let local_upgrade = req
                .headers()
                .contains_key(http::header::UPGRADE)
                .then(|| hyper::upgrade::on(&mut req));
            let mut guard = upstream.lock().await;
            // A newer certificate since: the next request goes with it
            // (the old one stays valid, so nothing in flight is refused);
            // an expired one is never presented.
            let stale = guard.as_ref().is_none_or(|up| {
                up.sender.is_closed()
                    || up.cert.expired()
                    || current
                        .borrow()
                        .as_ref()
                        .is_some_and(|c| c.cert_pem != up.cert.cert_pem)
            });
            if stale {
                *guard = None;
                match connect(&cfg, &current).await {
                    Ok(next) => *guard = Some(next),
                    Err(e) => {
                        tracing::warn!(app = %cfg.app, error = %format!("{e:#}"), "application tunnel: connecting to the proxy failed");
                        return Ok(match e.downcast_ref::<NoCertificate>() {
                            Some(_) => no_certificate(),
                            None => unavailable(),
                        });
                    }
                }
            }
            let Some(up) = guard.as_mut() else {
                return Ok(unavailable());
            };
            let mut resp = up.sender.send_request(req).await?;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(local) = local_upgrade
            {
                tokio::spawn(splice(local, hyper::upgrade::on(&mut resp)));
            }
            Ok::<_, hyper::Error>(resp.map(Either::Left))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .serve_connection(TokioIo::new(local), svc)
        .with_upgrades()
        .await?;
    Ok(())
}

/// An upgraded (WebSocket) local connection joined to the proxy's; it ends
/// when either side closes (the proxy closes it on a lock).
async fn splice(local: hyper::upgrade::OnUpgrade, proxy: hyper::upgrade::OnUpgrade) {
    match (local.await, proxy.await) {
        (Ok(l), Ok(p)) => {
            let (mut l, mut p) = (TokioIo::new(l), TokioIo::new(p));
            let r = tokio::io::copy_bidirectional(&mut l, &mut p).await;
            tracing::debug!(result = ?r, "application tunnel: upgraded connection ended");
        }
        (l, p) => {
            tracing::warn!(local = ?l.err(), proxy = ?p.err(), "application tunnel: upgrade failed");
        }
    }
}

type Either = http_body_util::Either<Incoming, http_body_util::Full<hyper::body::Bytes>>;

fn refused() -> http::Response<Either> {
    short(
        http::StatusCode::FORBIDDEN,
        "not addressed to this tunnel\n",
    )
}

fn unavailable() -> http::Response<Either> {
    short(
        http::StatusCode::BAD_GATEWAY,
        "the proxy cannot be reached\n",
    )
}

fn no_certificate() -> http::Response<Either> {
    short(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "the tunnel has no valid certificate (see the agent's log)\n",
    )
}

fn short(status: http::StatusCode, text: &'static str) -> http::Response<Either> {
    let mut r = http::Response::new(Either::Right(http_body_util::Full::new(
        hyper::body::Bytes::from_static(text.as_bytes()),
    )));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::addressed_here;
    use http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_requests_addressed_to_the_tunnel_pass() {
        let app = "grafana.example.test";
        for ok in [
            &[("host", "127.0.0.1:8080")][..],
            &[("host", "localhost:8080")],
            &[("host", "[::1]:8080")],
            &[("host", "grafana.example.test")],
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            &[
                ("host", "127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "none")],
        ] {
            assert!(addressed_here(&headers(ok), app), "{ok:?}");
        }
        for bad in [
            &[][..],
            &[("host", "evil.example:8080")],
            &[("host", "127.0.0.1.evil.example")],
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example"),
            ],
            &[("host", "127.0.0.1:8080"), ("origin", "null")],
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")],
        ] {
            assert!(!addressed_here(&headers(bad), app), "{bad:?}");
        }
    }
}
