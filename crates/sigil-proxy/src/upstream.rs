//! Upstream HTTP/1.1 connections owned by one client connection and driven
//! inside its task (as nginx's event loop does): a request handed to one, and
//! its answer, wake no other task — no pool shared through channels, no
//! hand-off to a connection task on the other worker thread. They close with
//! the client connection (a lock closes both).
//!
//! A WebSocket upgrade gets a connection of its own, in its own task: it
//! outlives the HTTP exchange that opened it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::{Request, Response};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// A request body on its way upstream: cut at `max_body_bytes`.
pub type UpstreamBody = Limited<Incoming>;

type Sender = SendRequest<UpstreamBody>;
type Driven = Pin<Box<dyn Future<Output = ()> + Send>>;
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per client connection (an HTTP/2 client may have
/// several requests in flight; an HTTP/1.1 one needs one).
const MAX_IDLE: usize = 8;

/// Where to connect.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub connect_timeout: Duration,
}

/// A connection to an upstream (host, port).
struct Conn {
    host: String,
    port: u16,
    sender: Sender,
}

/// One client connection's upstream connections.
pub struct Upstreams {
    /// Idle or busy connections.
    conns: Mutex<Vec<Conn>>,
    /// New connections go to the client connection's task to be driven.
    drive: mpsc::UnboundedSender<Driven>,
    /// The client sends one request at a time (HTTP/1.1): a busy connection
    /// is waited for rather than a second one opened.
    serial: bool,
}

/// Drives a client connection's upstream connections; polled by its task.
pub struct Driver {
    rx: mpsc::UnboundedReceiver<Driven>,
    set: FuturesUnordered<Driven>,
}

impl Driver {
    /// Runs for as long as it is polled (never completes).
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                Some(f) = self.rx.recv() => self.set.push(f),
                Some(()) = self.set.next(), if !self.set.is_empty() => {}
                else => std::future::pending::<()>().await,
            }
        }
    }
}

impl Upstreams {
    pub fn new(serial: bool) -> (Upstreams, Driver) {
        let (drive, rx) = mpsc::unbounded_channel();
        (
            Upstreams {
                conns: Mutex::default(),
                drive,
                serial,
            },
            Driver {
                rx,
                set: FuturesUnordered::new(),
            },
        )
    }

    /// A usable connection to `t`: an idle one, the busy one of a serial
    /// client once free, or a new one (`true`).
    async fn checkout(&self, t: &Target<'_>) -> Result<(Conn, bool), Error> {
        let busy = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.retain(|c| !c.sender.is_closed());
            let mut busy = None;
            let mut i = 0;
            while i < conns.len() {
                if conns[i].host == t.host && conns[i].port == t.port {
                    if conns[i].sender.is_ready() {
                        return Ok((conns.swap_remove(i), false));
                    }
                    if self.serial && busy.is_none() {
                        busy = Some(conns.swap_remove(i));
                        continue;
                    }
                }
                i += 1;
            }
            busy
        };
        if let Some(mut c) = busy
            && c.sender.ready().await.is_ok()
        {
            return Ok((c, false));
        }
        Ok((self.connect(t, false).await?, true))
    }

    async fn connect(&self, t: &Target<'_>, upgrade: bool) -> Result<Conn, Error> {
        let tcp = tokio::time::timeout(
            t.connect_timeout,
            tokio::net::TcpStream::connect((t.host, t.port)),
        )
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", t.host, t.port))??;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, UpstreamBody>(TokioIo::new(tcp))
            .await?;
        if upgrade {
            // Driven in its own task: the tunnel outlives this exchange.
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        } else {
            let driven: Driven = Box::pin(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            self.drive
                .send(driven)
                .map_err(|_| "the client connection is closing")?;
        }
        Ok(Conn {
            host: t.host.to_string(),
            port: t.port,
            sender,
        })
    }

    /// Send `req` (origin-form URI, Host set) to `t`. A request that a
    /// reused connection closed before taking is sent once more on a new one.
    pub async fn send(
        &self,
        t: &Target<'_>,
        req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, Error> {
        if upgrade {
            let mut c = self.connect(t, true).await?;
            return Ok(c.sender.send_request(req).await?);
        }
        let (mut c, mut fresh) = self.checkout(t).await?;
        let mut req = req;
        loop {
            match c.sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(c);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => {
                        req = back;
                        c = self.connect(t, false).await?;
                        fresh = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Back for the next request (an HTTP/1.1 connection is ready again
    /// once this response's body has been read).
    fn checkin(&self, c: Conn) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < MAX_IDLE {
            conns.push(c);
        }
    }
}
