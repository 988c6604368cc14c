//! SSH policy of a role set: what a user certificate permits, which host
//! principals a host may get, and which logins a host accepts — the last
//! computed so that a host can decide a login offline.

use super::{RoleSet, entry_matches, glob_match};
use crate::role::{Cidr, RoleOptions};
use crate::workload_identity::template::{self, Piece};
use std::collections::{BTreeMap, BTreeSet};

/// Permissions of an SSH user certificate, most-restrictive across roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshPermissions {
    /// `permit-port-forwarding`.
    pub port_forwarding: bool,
    /// `permit-agent-forwarding`.
    pub agent_forwarding: bool,
    /// `permit-X11-forwarding`.
    pub x11_forwarding: bool,
    /// `permit-pty`.
    pub pty: bool,
    /// `permit-user-rc`.
    pub user_rc: bool,
    /// None = no restriction; Some(list) = the `source-address` critical option; Some(empty) = no address is allowed (issue no SSH cert).
    pub source_address: Option<Vec<String>>,
}

/// What a host needs to decide a login offline.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HostLogins {
    /// Exact logins allowed here (static `allow.logins` of the roles whose
    /// `allow.node_labels` match the host), minus static `deny.logins` and
    /// minus any a deny pattern matches, so each passes [`HostLogins::allows`].
    pub logins: Vec<String>,
    /// Globs for template logins of matching roles: each `{{ ... }}`
    /// placeholder replaced by `*` (`ci-{{ join.gitlab.user_login }}` →
    /// `ci-*`). The certificate's principals (rendered by the auth service)
    /// say which login it really is; the pattern only says the host agrees.
    pub login_patterns: Vec<String>,
    /// Globs for template `deny.logins` of every role (deny applies
    /// everywhere): a login matching one is refused. Static `deny.logins`
    /// are here too (a login has no `*` or `?`, so it matches only itself):
    /// they must refuse what a login pattern would let in.
    pub deny_patterns: Vec<String>,
}

impl HostLogins {
    /// Whether `login` is allowed (exact or pattern, and not denied by a
    /// pattern). A string that is not a valid login is never allowed.
    pub fn allows(&self, login: &str) -> bool {
        crate::role::validate_login(login).is_ok()
            && (self.logins.iter().any(|l| l == login)
                || self.login_patterns.iter().any(|p| glob_match(p, login)))
            && !self.deny_patterns.iter().any(|p| glob_match(p, login))
    }
}

/// One `permit-*` permission: its role option name, where a role sets it,
/// where [`SshPermissions`] holds it, and its default when no role says.
pub(crate) struct SshFlag {
    pub name: &'static str,
    pub of_role: fn(&RoleOptions) -> Option<bool>,
    pub of_permissions: fn(&SshPermissions) -> bool,
    /// What a certificate gets when no role says.
    pub default: bool,
}

/// Every `permit-*` permission a role option decides.
pub(crate) const SSH_FLAGS: [SshFlag; 5] = [
    SshFlag {
        name: "ssh_port_forwarding",
        of_role: |o| o.ssh_port_forwarding,
        of_permissions: |p| p.port_forwarding,
        default: false,
    },
    SshFlag {
        name: "ssh_agent_forwarding",
        of_role: |o| o.ssh_agent_forwarding,
        of_permissions: |p| p.agent_forwarding,
        default: false,
    },
    SshFlag {
        name: "ssh_x11_forwarding",
        of_role: |o| o.ssh_x11_forwarding,
        of_permissions: |p| p.x11_forwarding,
        default: false,
    },
    SshFlag {
        name: "ssh_pty",
        of_role: |o| o.ssh_pty,
        of_permissions: |p| p.pty,
        default: true,
    },
    SshFlag {
        name: "ssh_user_rc",
        of_role: |o| o.ssh_user_rc,
        of_permissions: |p| p.user_rc,
        default: false,
    },
];

impl RoleSet {
    /// Defaults when no role says: pty true, all others false. Any role
    /// setting false → false; else any role setting true → true.
    /// source_address: intersection over the roles that set it (CIDR
    /// intersection: a∩b is the narrower one when one contains the other,
    /// else empty); normalised, sorted, de-duplicated.
    pub fn ssh_permissions(&self) -> SshPermissions {
        let flag = |f: &SshFlag| {
            let said: Vec<bool> = self
                .roles
                .iter()
                .filter_map(|r| (f.of_role)(&r.spec.options))
                .collect();
            if said.contains(&false) {
                false
            } else if said.contains(&true) {
                true
            } else {
                f.default
            }
        };
        let [pf, af, x11, pty, rc] = SSH_FLAGS.each_ref().map(flag);
        SshPermissions {
            port_forwarding: pf,
            agent_forwarding: af,
            x11_forwarding: x11,
            pty,
            user_rc: rc,
            source_address: self.source_address(),
        }
    }

    fn source_address(&self) -> Option<Vec<String>> {
        let mut allowed: Option<BTreeSet<Cidr>> = None;
        for r in &self.roles {
            let list = &r.spec.options.ssh_source_address;
            if list.is_empty() {
                continue;
            }
            // Validated when the role was stored; an entry that still does
            // not parse allows nothing (fail closed).
            let these: BTreeSet<Cidr> = list.iter().filter_map(|c| Cidr::parse(c).ok()).collect();
            allowed = Some(match allowed {
                None => these,
                Some(prev) => prev
                    .iter()
                    .flat_map(|a| these.iter().filter_map(|b| a.intersect(b)))
                    .collect(),
            });
        }
        allowed.map(|set| {
            // Drop a network another entry already contains.
            set.iter()
                .filter(|c| !set.iter().any(|o| o != *c && o.contains(c)))
                .map(Cidr::to_string)
                .collect()
        })
    }

    /// True if some role allows `principal` (exact host name/IP requested by
    /// a host) via allow.ssh_host_principals globs and no role's deny matches
    /// it. Host names compare case-insensitively; a principal that is not a
    /// valid exact host name or IP is never allowed.
    pub fn allows_ssh_host_principal(&self, principal: &str) -> bool {
        if crate::role::validate_host_principal(principal, false).is_err() {
            return false;
        }
        let any = |list: &Vec<String>| list.iter().any(|p| host_pattern_matches(p, principal));
        !self
            .roles
            .iter()
            .any(|r| any(&r.spec.deny.ssh_host_principals))
            && self
                .roles
                .iter()
                .any(|r| any(&r.spec.allow.ssh_host_principals))
    }

    /// Logins this bot may use on a host with `host_labels`: None when it
    /// may not log in there at all. A host without labels accepts no one; a
    /// role counts only if its non-empty `allow.node_labels` matches; any
    /// role's `deny.node_labels` matching the host (one key/value is enough)
    /// shuts the host off entirely.
    pub fn host_logins(&self, host_labels: &BTreeMap<String, String>) -> Option<HostLogins> {
        if host_labels.is_empty() {
            return None;
        }
        let denied_here = self.roles.iter().any(|r| {
            r.spec
                .deny
                .node_labels
                .iter()
                .any(|(k, pats)| entry_matches(k, pats, host_labels))
        });
        if denied_here {
            return None;
        }
        let matching = self.roles.iter().filter(|r| {
            let sel = &r.spec.allow.node_labels;
            !sel.is_empty()
                && sel
                    .iter()
                    .all(|(k, pats)| entry_matches(k, pats, host_labels))
        });
        let (mut logins, mut login_patterns) = (BTreeSet::new(), BTreeSet::new());
        for r in matching {
            for l in &r.spec.allow.logins {
                match login_glob(l) {
                    LoginGlob::Exact => logins.insert(l.clone()),
                    LoginGlob::Pattern(p) => login_patterns.insert(p),
                    LoginGlob::Invalid => false,
                };
            }
        }
        let mut deny_patterns = BTreeSet::new();
        for l in self.roles.iter().flat_map(|r| &r.spec.deny.logins) {
            deny_patterns.insert(match login_glob(l) {
                LoginGlob::Exact => l.clone(),
                LoginGlob::Pattern(p) => p,
                // A deny that cannot be read denies everything (fail closed).
                LoginGlob::Invalid => "*".into(),
            });
        }
        logins.retain(|l| !deny_patterns.iter().any(|p| glob_match(p, l)));
        if logins.is_empty() && login_patterns.is_empty() {
            return None;
        }
        Some(HostLogins {
            logins: logins.into_iter().collect(),
            login_patterns: login_patterns.into_iter().collect(),
            deny_patterns: deny_patterns.into_iter().collect(),
        })
    }
}

enum LoginGlob {
    Exact,
    Pattern(String),
    Invalid,
}

/// A role login as a host sees it: exact, or a template as a glob.
fn login_glob(login: &str) -> LoginGlob {
    if !login.contains("{{") {
        return LoginGlob::Exact;
    }
    let Ok(pieces) = template::parse(login) else {
        return LoginGlob::Invalid;
    };
    let glob: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Literal(t) => *t,
            Piece::Attribute(_) => "*",
        })
        .collect();
    LoginGlob::Pattern(glob)
}

/// A host principal pattern against an exact principal: `*` alone matches
/// any name; otherwise label by label (a `*` never crosses a `.`, so
/// `web*` cannot certify `web.attacker.example`), case-insensitive;
/// addresses compare as addresses (`::1` = `0::1`).
pub(crate) fn host_pattern_matches(pattern: &str, principal: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let (Ok(a), Ok(b)) = (
        pattern.parse::<std::net::IpAddr>(),
        principal.parse::<std::net::IpAddr>(),
    ) {
        return a == b;
    }
    let (p, v) = (pattern.to_ascii_lowercase(), principal.to_ascii_lowercase());
    let (pl, vl): (Vec<&str>, Vec<&str>) = (p.split('.').collect(), v.split('.').collect());
    pl.len() == vl.len() && pl.iter().zip(&vl).all(|(p, v)| glob_match(p, v))
}

#[cfg(test)]
#[path = "ssh_tests.rs"]
mod tests;
