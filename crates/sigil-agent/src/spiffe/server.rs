//! The `workload-api` service: a Unix socket serving the SPIFFE Workload API
//! and Envoy SDS. Every connection carries its peer's credentials (taken at
//! accept) for attestation, and passes through [`AuthorityRewrite`] so that
//! gRPC clients which send a socket path as `:authority` (grpcio, py-spiffe)
//! are served rather than reset by the HTTP/2 layer.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use sigil_proto::deadline::{Deadlines, ReadDeadline};
use sigil_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use super::api::WorkloadApi;
use super::sds::SdsService;
use crate::fsutil;
use crate::workload::attest::{
    Attestor, AttestorSet, ContainerAttestor, PeerProcess, SystemdAttestor, UnixAttestor,
};
use crate::workload::authority::AuthorityRewrite;

/// A workload must send the HTTP/2 preface (24 bytes) and its SETTINGS
/// frame header (9) within this time of connecting...
pub const OPENING_TIMEOUT: Duration = Duration::from_secs(10);
/// ...and then never be silent longer than this. Live clients are not: the
/// server pings every [`KEEPALIVE`] and their acknowledgements are reads.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 keep-alive ping interval, and how long an unanswered ping waits.
pub const KEEPALIVE: Duration = Duration::from_secs(20);

const DEADLINES: Deadlines = Deadlines {
    first: OPENING_TIMEOUT,
    first_bytes: 24 + 9,
    idle: IDLE_TIMEOUT,
};

/// One accepted workload connection.
pub struct WorkloadConn {
    io: AuthorityRewrite<ReadDeadline<UnixStream>>,
    peer: PeerProcess,
}

impl tonic::transport::server::Connected for WorkloadConn {
    type ConnectInfo = PeerProcess;
    fn connect_info(&self) -> PeerProcess {
        self.peer.clone()
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Bind the socket: create its directory, replace a stale socket (never a
/// regular file), and let every local user connect — attestation decides
/// what each caller gets.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    // The directory must be one nobody else can swap entries in, since the
    // socket is replaced, bound and chmod-ed by path below.
    if let Some(dir) = path.parent() {
        const WHAT: &str = "the Workload API socket directory";
        if std::fs::symlink_metadata(dir).is_err() {
            fsutil::SafeDir::create(dir, WHAT, fsutil::DirKind::Shared)?;
        }
        fsutil::check_parents(dir, WHAT)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the Workload API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("setting permissions on {}", path.display()))?;
    Ok(l)
}

/// Serve until the task is dropped; removes the socket on the way out.
pub async fn serve(path: PathBuf, listener: UnixListener, api: WorkloadApi) -> anyhow::Result<()> {
    let sds = SdsService::new(api.clone());
    let incoming = futures::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => match PeerProcess::from_stream(&s) {
                    Ok(peer) => {
                        let conn = WorkloadConn {
                            io: AuthorityRewrite::new(ReadDeadline::new(s, DEADLINES)),
                            peer,
                        };
                        return Some((Ok::<_, std::io::Error>(conn), l));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no peer credentials; connection dropped")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the Workload API socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    let _cleanup = RemoveOnDrop(path.clone());
    tracing::info!(socket = %path.display(), "Workload API listening");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .layer(super::call_metrics::CallMetricsLayer)
        .add_service(SpiffeWorkloadApiServer::new(api))
        .add_service(SecretDiscoveryServiceServer::new(sds))
        .serve_with_incoming(incoming)
        .await
        .context("serving the Workload API")
}

/// The attestors a service runs (`attestors:`; default all of them).
pub fn attestor_set(names: Option<&[String]>) -> AttestorSet {
    let all: Vec<String> = crate::config::ATTESTORS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let chosen = names.map(<[String]>::to_vec).unwrap_or(all);
    AttestorSet::new(
        chosen
            .iter()
            .filter_map(|n| -> Option<Box<dyn Attestor>> {
                Some(match n.as_str() {
                    "unix" => Box::new(UnixAttestor::new()),
                    "systemd" => Box::new(SystemdAttestor),
                    "docker" => Box::new(ContainerAttestor::docker()),
                    "podman" => Box::new(ContainerAttestor::podman()),
                    _ => return None, // config validation lists the known names
                })
            })
            .collect(),
    )
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
