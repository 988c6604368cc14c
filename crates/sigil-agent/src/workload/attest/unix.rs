//! Unix facts about the peer: ids, names, groups, executable path and hash.
//!
//! Attributes:
//! - `workload.unix.pid`, `workload.unix.uid`, `workload.unix.gid`: from
//!   SO_PEERCRED (effective ids at connect time).
//! - `workload.unix.supplementary_gids`: comma-separated, ascending, from the
//!   `Groups:` line of /proc/PID/status; empty when there are none.
//! - `workload.unix.user`, `workload.unix.group`: names via NSS, omitted when
//!   the id has none.
//! - `workload.unix.path`: readlink of /proc/PID/exe (with the kernel's
//!   ` (deleted)` suffix if the file was removed since).
//! - `workload.unix.sha256`: lowercase hex SHA-256 of the executable.
//!
//! Path and hash are omitted when the agent may not inspect the peer's
//! executable (an unprivileged agent and another user's process).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::hashcache::{CacheStats, DEFAULT_CAPACITY, ExeHashCache};
use super::names::{Kind, NameCache};
use super::peer::status_field;
use super::{AttestError, Attestor, ProcFiles, proc_io};

/// Adds the Unix attributes. Clones share their caches.
#[derive(Clone)]
pub struct UnixAttestor {
    hashes: Arc<ExeHashCache>,
    names: Arc<NameCache>,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::new()
    }
}

impl UnixAttestor {
    /// With an executable-hash cache of the default size (1024 entries).
    pub fn new() -> Self {
        Self::with_hash_cache_capacity(DEFAULT_CAPACITY)
    }

    /// With an executable-hash cache of `capacity` entries.
    pub fn with_hash_cache_capacity(capacity: usize) -> Self {
        UnixAttestor {
            hashes: Arc::new(ExeHashCache::new(capacity)),
            names: Arc::default(),
        }
    }

    /// Hits and misses of the executable-hash cache.
    pub fn hash_cache_stats(&self) -> CacheStats {
        self.hashes.stats()
    }
}

#[async_trait::async_trait]
impl Attestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    async fn attest(
        &self,
        proc: &ProcFiles<'_>,
        attrs: &mut BTreeMap<String, String>,
    ) -> Result<(), AttestError> {
        let peer = proc.peer();
        let mut put = |k: &str, v: String| {
            attrs.insert(format!("workload.unix.{k}"), v);
        };
        put("pid", peer.pid.to_string());
        put("uid", peer.uid.to_string());
        put("gid", peer.gid.to_string());

        let status = proc.read("status")?;
        let groups = status_field(&status, "Groups:").ok_or(AttestError::Malformed("status"))?;
        put("supplementary_gids", supplementary_gids(groups)?);

        if let Some(user) = self.names.name(Kind::User, peer.uid).await {
            put("user", user);
        }
        if let Some(group) = self.names.name(Kind::Group, peer.gid).await {
            put("group", group);
        }

        let exe = match std::fs::read_link(format!("/proc/{}/exe", peer.pid)) {
            Ok(exe) => exe,
            Err(e) if denied(&e) => {
                // An unprivileged agent may not look at other users'
                // executables; selectors on path or hash then fail closed.
                tracing::debug!(
                    pid = peer.pid,
                    "no access to the peer's executable; omitting path and sha256"
                );
                return Ok(());
            }
            Err(e) => return Err(proc_io("exe")(e)),
        };
        put("path", exe.to_string_lossy().into_owned());
        put("sha256", self.hashes.sha256_of_exe(peer.pid).await?);
        Ok(())
    }
}

fn denied(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// The `Groups:` value as sorted, de-duplicated, comma-separated gids.
fn supplementary_gids(value: &str) -> Result<String, AttestError> {
    let mut gids = value
        .split_whitespace()
        .map(|g| {
            g.parse::<u32>()
                .map_err(|_| AttestError::Malformed("status"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    gids.sort_unstable();
    gids.dedup();
    Ok(gids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_sorted_and_joined() {
        assert_eq!(
            supplementary_gids("\t27 4 1000 4 ").ok().as_deref(),
            Some("4,27,1000")
        );
        assert_eq!(supplementary_gids("\t").ok().as_deref(), Some(""));
        assert!(supplementary_gids("\t4 x").is_err());
    }
}
