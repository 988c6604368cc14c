//! Workload attestation: turn the peer of a Workload API connection into
//! attributes (`workload.unix.uid`, `workload.systemd.unit`, ...) that
//! registration entries select on.
//!
//! [`AttestorSet::attest`] pins the peer process with a pidfd, runs every
//! attestor, then confirms the pid still named the connecting process (the
//! `peer` module says why and how). Any doubt is
//! [`AttestError::ProcessGone`]: attributes of a stranger are worse than none.

mod cgroup;
mod container;
mod engine;
mod hashcache;
mod names;
mod peer;
mod systemd;
mod unix;

use std::collections::BTreeMap;
use std::io;

pub use container::{ContainerAttestor, ENGINE_TIMEOUT, Engine};
pub use hashcache::CacheStats;
pub use peer::{PeerProcess, ProcFiles, boot_ticks_now};
pub use systemd::SystemdAttestor;
pub use unix::UnixAttestor;

use peer::Pinned;

/// Why a peer could not be attested. Messages name what was being read,
/// never file contents.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The peer exited, or its pid now names a different process.
    #[error("the peer process exited or its pid was reused")]
    ProcessGone,
    /// Reading something about the peer failed.
    #[error("reading {what} of the peer process")]
    Io {
        /// What was being read (a /proc file name and the like).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("unexpected contents in {0} of the peer process")]
    Malformed(&'static str),
}

impl AttestError {
    /// An I/O error while reading `what`.
    pub fn io(what: &'static str, source: io::Error) -> AttestError {
        AttestError::Io { what, source }
    }
}

/// Map a /proc read error: a missing entry or process means the process is gone.
pub(super) fn proc_io(what: &'static str) -> impl FnOnce(io::Error) -> AttestError {
    move |e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => AttestError::ProcessGone,
        _ => AttestError::io(what, e),
    }
}

/// One source of attributes about a peer.
#[async_trait::async_trait]
pub trait Attestor: Send + Sync {
    /// Short name for logs ("unix", "docker", ...).
    fn name(&self) -> &'static str;

    /// Add this attestor's attributes for the peer of `proc` to `attrs`,
    /// reading its /proc files through `proc`.
    async fn attest(
        &self,
        proc: &ProcFiles<'_>,
        attrs: &mut BTreeMap<String, String>,
    ) -> Result<(), AttestError>;
}

/// The attestors a Workload API server runs on every connection.
pub struct AttestorSet {
    attestors: Vec<Box<dyn Attestor>>,
}

impl AttestorSet {
    /// Unix, systemd, Docker and Podman, with default sockets.
    pub fn standard() -> Self {
        Self::new(vec![
            Box::new(UnixAttestor::new()),
            Box::new(SystemdAttestor),
            Box::new(ContainerAttestor::docker()),
            Box::new(ContainerAttestor::podman()),
        ])
    }

    /// A chosen list, run in order.
    pub fn new(attestors: Vec<Box<dyn Attestor>>) -> Self {
        AttestorSet { attestors }
    }

    /// All attributes of `peer`, or an error if any attestor failed or the
    /// pid stopped naming the connecting process along the way.
    pub async fn attest(
        &self,
        peer: &PeerProcess,
    ) -> Result<BTreeMap<String, String>, AttestError> {
        let pinned = Pinned::new(peer)?;
        let files = ProcFiles::new(peer);
        let mut attrs = BTreeMap::new();
        for a in &self.attestors {
            if let Err(e) = a.attest(&files, &mut attrs).await {
                // A read that failed because the process went away is not an I/O fault.
                if pinned.exited().unwrap_or(false) {
                    return Err(AttestError::ProcessGone);
                }
                tracing::debug!(attestor = a.name(), error = %e, "attestation failed");
                return Err(e);
            }
        }
        pinned.confirm(&files)?;
        Ok(attrs)
    }
}

#[cfg(test)]
mod tests;
