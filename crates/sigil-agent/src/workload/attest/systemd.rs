//! The systemd unit a process runs in, from its cgroup.
//!
//! Attributes:
//! - `workload.systemd.unit`: the innermost `.service` or `.scope` in the
//!   cgroup path (`0::/system.slice/foo.service` gives `foo.service`).
//! - `workload.systemd.manager`: `system`, or `user` when the unit lies under
//!   a per-user manager (`user@UID.service`). That subtree is delegated to the
//!   user, who can create a cgroup named `sshd.service` there, so a selector
//!   on a system unit should also require `manager = system`.

use std::collections::BTreeMap;

use super::cgroup::{self, Line};
use super::{AttestError, Attestor, ProcFiles};

/// Attribute with the unit name.
pub const UNIT: &str = "workload.systemd.unit";
/// Attribute with the unit's manager: `system` or `user`.
pub const MANAGER: &str = "workload.systemd.manager";

/// Adds the systemd unit of the peer, if it runs in one.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemdAttestor;

#[async_trait::async_trait]
impl Attestor for SystemdAttestor {
    fn name(&self) -> &'static str {
        "systemd"
    }

    async fn attest(
        &self,
        proc: &ProcFiles<'_>,
        attrs: &mut BTreeMap<String, String>,
    ) -> Result<(), AttestError> {
        let text = proc.read("cgroup")?;
        if let Some(u) = unit_of(&text) {
            attrs.insert(UNIT.into(), u.unit.to_string());
            let manager = if u.user_manager { "user" } else { "system" };
            attrs.insert(MANAGER.into(), manager.into());
        }
        Ok(())
    }
}

/// A unit found in a cgroup file.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unit<'a> {
    pub unit: &'a str,
    pub user_manager: bool,
}

/// The unit from the v2 line, or on cgroup v1 from the `name=systemd` one.
pub(super) fn unit_of(cgroup_file: &str) -> Option<Unit<'_>> {
    let lines: Vec<Line<'_>> = cgroup::lines(cgroup_file).collect();
    let line = *lines
        .iter()
        .find(|l| l.is_v2() && l.path != "/")
        .or_else(|| lines.iter().find(|l| l.is_v1_systemd()))?;
    let components: Vec<&str> = line.components().collect();
    let at = components.iter().rposition(|c| is_unit(c))?;
    Some(Unit {
        unit: components[at],
        user_manager: cgroup::delegated_to(components[..at].iter().copied()).is_some(),
    })
}

/// Processes live only in services and scopes (slices hold no processes).
fn is_unit(component: &str) -> bool {
    [".service", ".scope"]
        .iter()
        .any(|s| component.len() > s.len() && component.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(text: &str) -> Option<(&str, bool)> {
        unit_of(text).map(|u| (u.unit, u.user_manager))
    }

    #[test]
    fn units_from_cgroup_lines() {
        let cases: &[(&str, Option<(&str, bool)>)] = &[
            (
                "0::/system.slice/foo.service\n",
                Some(("foo.service", false)),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/bar.service\n",
                Some(("bar.service", true)),
            ),
            (
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                Some(("session-3.scope", false)),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
                Some(("init.scope", true)),
            ),
            // A service's own sub-cgroups still belong to the service.
            (
                "0::/system.slice/nginx.service/workers\n",
                Some(("nginx.service", false)),
            ),
            (
                "0::/system.slice/docker-0123.scope\n",
                Some(("docker-0123.scope", false)),
            ),
            // cgroup v1: the name=systemd hierarchy.
            (
                "12:memory:/system.slice/foo.service\n1:name=systemd:/system.slice/sshd.service\n0::/\n",
                Some(("sshd.service", false)),
            ),
            ("0::/\n", None),
            ("0::/init.scope.d\n", None),
            ("0::/system.slice\n", None),
            ("4:memory:/docker/abc\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(unit(text), *want, "{text:?}");
        }
    }
}
