//! An open-loop HTTP/1.1 load generator over keep-alive connections (plain
//! TCP or TLS with a client certificate), and a small fast upstream to put
//! behind the proxies under test.
//!
//! Open loop: arrivals are on a timetable fixed before the run (one every
//! `1/rate` s); a free connection takes the next due arrival, and latency is
//! counted from the arrival's *scheduled* time, so a stall shows up as the
//! queueing it causes instead of silently lowering the offered load
//! ("coordinated omission").

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Where the load goes.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Host header, and the TLS server name.
    pub host: String,
    /// TLS (with the client certificate in it), or plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// One phase at one offered rate.
#[derive(Debug, Clone)]
pub struct Phase {
    pub offered: f64,
    /// 200 responses per second of the phase.
    pub achieved: f64,
    pub ok: u64,
    /// Non-200 answers, transport errors, timeouts.
    pub failed: u64,
    /// Arrivals still queued when the phase's drain time ran out.
    pub unsent: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub secs: f64,
}

impl Phase {
    /// Carried: everything sent and answered 200 in time, p99 under `p99_max`.
    pub fn sustained(&self, p99_max: Duration) -> bool {
        let total = self.ok + self.failed + self.unsent;
        self.unsent == 0
            && (self.failed as f64) <= 0.001 * total as f64
            && self.p99 <= p99_max
            && self.achieved >= 0.95 * self.offered
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One keep-alive connection to `t`.
pub async fn connect(t: &Target) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(t.addr)
        .await
        .with_context(|| format!("connecting to {}", t.addr))?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match &t.tls {
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from(t.host.clone())?;
            Box::new(
                tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {}", t.addr))?,
            )
        }
        None => Box::new(tcp),
    };
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// The TLS version, cipher suite and key-exchange group a handshake with
/// `t` negotiates (what the figures were measured with).
pub async fn negotiated(t: &Target) -> anyhow::Result<String> {
    let cfg = t.tls.clone().context("not a TLS target")?;
    let tcp = TcpStream::connect(t.addr).await?;
    let name = rustls_pki_types::ServerName::try_from(t.host.clone())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    let c = tls.get_ref().1;
    Ok(format!(
        "{:?}, {:?}, group {:?}",
        c.protocol_version(),
        c.negotiated_cipher_suite().map(|s| s.suite()),
        c.negotiated_key_exchange_group().map(|g| g.name())
    ))
}

/// One GET /: its status, the body read to the end.
pub async fn get(send: &mut SendRequest<Empty<Bytes>>, host: &str) -> anyhow::Result<u16> {
    send.ready().await?;
    let req = http::Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// After the last arrival, how long queued ones may still be sent.
const DRAIN: Duration = Duration::from_secs(2);

/// `rate` requests/s for `secs` over `conns` keep-alive connections.
pub async fn run(t: &Target, rate: f64, secs: f64, conns: usize) -> anyhow::Result<Phase> {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(t).await?);
    }
    let total = (rate * secs) as u64;
    let t0 = Instant::now() + Duration::from_millis(20);
    let deadline = t0 + Duration::from_secs_f64(secs) + DRAIN;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut send| {
            let (rx, t) = (rx.clone(), t.clone());
            tokio::spawn(async move {
                let (mut lats, mut failed, mut unsent) = (Vec::new(), 0u64, 0u64);
                let mut last = t0;
                loop {
                    // Idle workers queue on the lock; the one holding it
                    // takes the next arrival when it is due.
                    let Some(due) = rx.lock().await.recv().await else {
                        break;
                    };
                    if Instant::now() > deadline {
                        unsent += 1;
                        continue;
                    }
                    match tokio::time::timeout(REQUEST_TIMEOUT, get(&mut send, &t.host)).await {
                        Ok(Ok(200)) => {
                            last = Instant::now();
                            lats.push(last - due);
                        }
                        Ok(Ok(_)) => failed += 1,
                        _ => {
                            failed += 1;
                            // The connection may be gone: a new one, or stop.
                            match connect(&t).await {
                                Ok(s) => send = s,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (lats, failed, unsent, last)
            })
        })
        .collect();
    // The timetable: every arrival due by now is released (tokio's timer
    // ticks in milliseconds, so arrivals come in small batches; each keeps
    // its own due time).
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut k: u64 = 0;
    while k < total {
        let now = Instant::now();
        while k < total {
            let due = t0 + interval.mul_f64(k as f64);
            if due > now {
                break;
            }
            let _ = tx.send(due);
            k += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(tx);
    let (mut lats, mut failed, mut unsent, mut last) = (Vec::new(), 0, 0, t0);
    for w in workers {
        let (l, f, u, at) = w.await?;
        lats.extend(l);
        failed += f;
        unsent += u;
        last = last.max(at);
    }
    // Arrivals a dead worker never took.
    let seen = lats.len() as u64 + failed + unsent;
    unsent += total.saturating_sub(seen);
    lats.sort_unstable();
    let pct = |p: f64| {
        lats.get(((lats.len() as f64 * p) as usize).min(lats.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let span = (last - t0).as_secs_f64().max(secs);
    Ok(Phase {
        offered: rate,
        achieved: lats.len() as f64 / span,
        ok: lats.len() as u64,
        failed,
        unsent,
        p50: pct(0.50),
        p99: pct(0.99),
        max: lats.last().copied().unwrap_or_default(),
        secs: span,
    })
}

/// The upstream's answer: a small fixed page.
const BODY: &[u8] = b"{\"ok\":true,\"from\":\"bench upstream\",\"padding\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}\n";

/// A minimal HTTP/1.1 keep-alive server answering every request with [`BODY`].
pub async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
