//! Docker and Podman containers: the container id from the cgroup, then
//! image and labels from the engine's API when its socket answers.
//!
//! Attributes (shown for docker; podman uses `workload.podman.`):
//! `workload.docker.container_id`, `workload.docker.image` (Config.Image),
//! `workload.docker.image_id` (Image), `workload.docker.labels.<key>`.
//!
//! A container id found under a per-user systemd manager (`user@UID.service`)
//! is a name that user could have given their own cgroup. The engine is then
//! only asked if that user is the one this agent runs as, so nobody can borrow
//! the image and labels of a root-owned container by naming a cgroup after it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::cgroup::{self, Line};
use super::engine;
use super::{AttestError, Attestor, ProcFiles};

/// How long the engine has to answer, across all its candidate sockets.
pub const ENGINE_TIMEOUT: Duration = Duration::from_millis(500);

/// The container engines we recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Docker: `/docker/<id>` or `docker-<id>.scope`.
    Docker,
    /// Podman: `libpod-<id>` or `libpod-<id>.scope`.
    Podman,
}

impl Engine {
    /// Attestor name and attribute namespace.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }

    /// Where the engine's API socket usually is, in the order tried.
    pub fn default_sockets(self) -> Vec<PathBuf> {
        match self {
            Engine::Docker => vec![PathBuf::from("/var/run/docker.sock")],
            Engine::Podman => {
                let mut v = vec![PathBuf::from("/run/podman/podman.sock")];
                // The agent's own runtime dir: a rootless podman of the user
                // the agent runs as.
                if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
                    v.push(PathBuf::from(dir).join("podman/podman.sock"));
                }
                v
            }
        }
    }
}

/// Adds the container id, image and labels for one engine.
#[derive(Clone, Debug)]
pub struct ContainerAttestor {
    engine: Engine,
    sockets: Vec<PathBuf>,
    timeout: Duration,
}

impl ContainerAttestor {
    /// Docker at its default socket.
    pub fn docker() -> Self {
        Self::new(Engine::Docker, Engine::Docker.default_sockets())
    }

    /// Podman at its default sockets.
    pub fn podman() -> Self {
        Self::new(Engine::Podman, Engine::Podman.default_sockets())
    }

    /// `engine` reached through `sockets`, tried in order.
    pub fn new(engine: Engine, sockets: Vec<PathBuf>) -> Self {
        ContainerAttestor {
            engine,
            sockets,
            timeout: ENGINE_TIMEOUT,
        }
    }

    /// Attributes from the text of a /proc/PID/cgroup file.
    async fn attest_cgroup(&self, cgroup_file: &str, attrs: &mut BTreeMap<String, String>) {
        let Some(found) = container_of(self.engine, cgroup_file) else {
            return;
        };
        let prefix = format!("workload.{}.", self.engine.name());
        attrs.insert(format!("{prefix}container_id"), found.id.to_string());
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if found.delegated_to.is_some_and(|uid| uid != me) {
            tracing::debug!(
                engine = self.engine.name(),
                "container cgroup is in another user's delegated subtree; not asking the engine"
            );
            return;
        }
        let Some(info) = self.inspect(found.id).await else {
            return;
        };
        let mut put = |k: &str, v: String| {
            attrs.insert(format!("{prefix}{k}"), v);
        };
        if let Some(image) = info.image {
            put("image", image);
        }
        if let Some(id) = info.image_id {
            put("image_id", id);
        }
        for (k, v) in info.labels {
            put(&format!("labels.{k}"), v);
        }
    }

    /// The engine's answer from the first socket that gives one, in time.
    async fn inspect(&self, id: &str) -> Option<engine::Inspect> {
        let engine = self.engine.name();
        let attempt = async {
            for socket in &self.sockets {
                match engine::inspect(socket, id).await {
                    Ok(info) => return Some(info),
                    Err(e) => {
                        tracing::debug!(engine, socket = %socket.display(), error = %format!("{e:#}"),
                        "container engine gave no answer; keeping only the container id")
                    }
                }
            }
            None
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                tracing::debug!(
                    engine,
                    "container engine timed out; keeping only the container id"
                );
                None
            })
    }
}

#[async_trait::async_trait]
impl Attestor for ContainerAttestor {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    async fn attest(
        &self,
        proc: &ProcFiles<'_>,
        attrs: &mut BTreeMap<String, String>,
    ) -> Result<(), AttestError> {
        let text = proc.read("cgroup")?;
        self.attest_cgroup(&text, attrs).await;
        Ok(())
    }
}

/// A container id found in a cgroup file.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Found<'a> {
    pub id: &'a str,
    /// Set when the id sits under `user@UID.service`.
    pub delegated_to: Option<u32>,
}

/// The first (outermost) container of `engine` in any hierarchy's path. A
/// nested engine's inner ids are unknown to the engine whose cgroups we see.
pub(super) fn container_of(engine: Engine, cgroup_file: &str) -> Option<Found<'_>> {
    cgroup::lines(cgroup_file).find_map(|line| in_line(engine, line))
}

fn in_line(engine: Engine, line: Line<'_>) -> Option<Found<'_>> {
    let components: Vec<&str> = line.components().collect();
    let (at, id) = components.iter().enumerate().find_map(|(i, c)| {
        let id = match engine {
            // cgroupfs driver: /docker/<id>; systemd driver: docker-<id>.scope.
            // A bare id elsewhere (e.g. /kubepods/.../<id>) is not Docker's.
            Engine::Docker if i > 0 && components[i - 1] == "docker" => Some(*c),
            Engine::Docker => c.strip_prefix("docker-")?.strip_suffix(".scope"),
            // systemd: libpod-<id>.scope; cgroupfs: libpod-<id>. The
            // libpod-conmon-<id> monitor fails the hex check.
            Engine::Podman => {
                let rest = c.strip_prefix("libpod-")?;
                Some(rest.strip_suffix(".scope").unwrap_or(rest))
            }
        }?;
        is_container_id(id).then_some((i, id))
    })?;
    Some(Found {
        id,
        delegated_to: cgroup::delegated_to(components[..at].iter().copied()),
    })
}

/// Engines name containers with 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;
