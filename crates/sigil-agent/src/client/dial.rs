//! Dialling the auth servers: resolve every configured address (a DNS name
//! with several addresses gives several servers), then connect in the order
//! the rotation gives, each with its own timeout, until one completes the
//! pinned TLS handshake. Every server is verified the same way: the cluster's
//! CA pins, and the name configured for it (DNS name or IP) in its
//! certificate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::BufWriter;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::rotation::{Backoff, Rotation};
use super::server_addr::ServerAddr;

/// TCP connect plus TLS handshake with one server: a server that does not
/// answer in this time is skipped for the next one.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Resolving one configured name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One address of one configured server: what the rotation keeps apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialled {
    pub server: ServerAddr,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Dialled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.server.is_ip() {
            write!(f, "{}", self.server)
        } else {
            write!(f, "{} ({})", self.server, self.addr)
        }
    }
}

/// The connection a channel uses.
pub type Connection = TlsStream<BufWriter<TcpStream>>;

/// The auth servers of this process and which of them works, shared by all
/// of its channels so that a new channel starts on the server in use.
#[derive(Clone)]
pub struct Servers(Arc<Inner>);

struct Inner {
    addrs: Vec<ServerAddr>,
    rotation: Mutex<Rotation<Dialled>>,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.0.addrs).finish()
    }
}

impl Servers {
    /// At least one server (the config and flag parsers refuse none).
    pub fn new(addrs: Vec<ServerAddr>) -> anyhow::Result<Servers> {
        if addrs.is_empty() {
            anyhow::bail!("auth_server: give at least one HOST:PORT");
        }
        Ok(Servers(Arc::new(Inner {
            addrs,
            rotation: Mutex::new(Rotation::new(Backoff::DEFAULT)),
        })))
    }

    /// The servers as configured, in order.
    pub fn addrs(&self) -> &[ServerAddr] {
        &self.0.addrs
    }

    fn rotation(&self) -> std::sync::MutexGuard<'_, Rotation<Dialled>> {
        self.0.rotation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a server other than `k` could be tried at once (a failed
    /// call is then worth repeating on it).
    pub fn another_ready(&self, k: Option<&Dialled>) -> bool {
        self.rotation().another_ready(k, Instant::now())
    }

    /// The server in use, if any worked yet.
    pub fn current(&self) -> Option<Dialled> {
        self.rotation().current().cloned()
    }

    /// A server answered `Unavailable` or timed out: skip it for a while.
    pub fn mark_down(&self, k: &Dialled, why: &str) {
        let wait = self
            .rotation()
            .failed(k, Instant::now(), rand::rng().random());
        metrics::counter!("sigil_agent_auth_server_failures_total").increment(1);
        tracing::warn!(server = %k, error = why, retry_in = ?wait, "auth server failed; skipping it for a while");
    }

    /// Every configured address resolved, in order (IP literals as they are).
    async fn resolve(&self) -> Vec<(Dialled, rustls_pki_types::ServerName<'static>)> {
        let mut out: Vec<(Dialled, _)> = Vec::new();
        for server in &self.0.addrs {
            let found = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host(server.lookup_target()),
            )
            .await;
            match found {
                Ok(Ok(addrs)) => {
                    for addr in addrs {
                        let d = Dialled {
                            server: server.clone(),
                            addr,
                        };
                        if !out.iter().any(|(x, _)| *x == d) {
                            out.push((d, server.server_name()));
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(server = %server, error = %e, "cannot resolve the auth server")
                }
                Err(_) => {
                    tracing::warn!(server = %server, "resolving the auth server timed out")
                }
            }
        }
        out
    }

    /// Connect to the first server that completes the TLS handshake.
    pub async fn connect(&self, tls: &TlsConnector) -> std::io::Result<(Dialled, Connection)> {
        let resolved = self.resolve().await;
        let attempts = {
            let mut r = self.rotation();
            r.set_candidates(resolved.iter().map(|(d, _)| d.clone()).collect());
            r.attempts(Instant::now())
        };
        let mut failures = Vec::new();
        for d in attempts {
            let Some((_, name)) = resolved.iter().find(|(x, _)| *x == d) else {
                continue;
            };
            let result = tokio::time::timeout(DIAL_TIMEOUT, dial(d.addr, name.clone(), tls)).await;
            let err = match result {
                Ok(Ok(conn)) => {
                    let change = self.rotation().succeeded(&d);
                    match change {
                        Some(Some(before)) => {
                            metrics::counter!("sigil_agent_auth_server_switches_total")
                                .increment(1);
                            tracing::info!(server = %d, previous = %before, "now using auth server");
                        }
                        Some(None) => tracing::info!(server = %d, "using auth server"),
                        None => {}
                    }
                    return Ok((d, conn));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {DIAL_TIMEOUT:?}"),
            };
            // A TLS error names what failed (e.g. the pin), never key material.
            self.mark_down(&d, &err);
            failures.push(format!("{d}: {err}"));
        }
        Err(std::io::Error::other(if failures.is_empty() {
            format!(
                "no address found for any auth server ({})",
                self.0
                    .addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!("no auth server reachable: {}", failures.join("; "))
        }))
    }
}

async fn dial(
    addr: SocketAddr,
    name: rustls_pki_types::ServerName<'static>,
    tls: &TlsConnector,
) -> std::io::Result<Connection> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    // Buffer writes so one HTTP/2 flush is one syscall.
    let tcp = BufWriter::with_capacity(8 * 1024, tcp);
    tls.connect(name, tcp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_with_several_addresses_is_several_servers() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let of_localhost: Vec<SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
                .expect("localhost resolves")
                .collect();
        let servers = Servers::new(vec![
            ServerAddr::parse(&format!("localhost:{port}")).expect("name"),
            ServerAddr::parse(&format!("127.0.0.1:{port}")).expect("ip"),
        ])
        .expect("servers");
        let resolved = servers.resolve().await;
        let mut want: Vec<String> = of_localhost
            .iter()
            .map(|a| format!("localhost:{port} ({a})"))
            .collect();
        want.dedup();
        want.push(format!("127.0.0.1:{port}"));
        let got: Vec<String> = resolved.iter().map(|(d, _)| d.to_string()).collect();
        assert_eq!(got, want);
        // Every address is verified as the configured name, not the address.
        assert!(
            resolved[..resolved.len() - 1]
                .iter()
                .all(|(_, n)| n.to_str() == "localhost")
        );

        // Each is tried, and each failure named; then all are backing off.
        let pin = format!("sha256:{}", "0".repeat(64));
        let tls = TlsConnector::from(Arc::new(
            super::super::tls_config(&[pin], None).expect("tls"),
        ));
        let Err(e) = servers.connect(&tls).await else {
            panic!("connected to a port nobody listens on");
        };
        for w in &want {
            assert!(e.to_string().contains(w.as_str()), "{w}: {e}");
        }
        assert!(!servers.another_ready(None));
        assert_eq!(servers.current(), None);
    }
}
