//! Kubernetes access: which clusters a role set reaches, as which user and
//! in which groups — and what granting those fields would give (escalation).
//!
//! A role's `kubernetes_users` and `kubernetes_groups` apply to the clusters
//! its own `allow.kubernetes_labels` select (a role with users but no labels
//! grants nothing). Deny wins: a cluster any role's `deny.kubernetes_labels`
//! matches is out of reach, and users and groups matching any role's
//! `deny.kubernetes_users` / `deny.kubernetes_groups` (globs) are removed.

use std::collections::{BTreeMap, BTreeSet};

use super::grants::{pattern_covers, selector_covers};
use super::{LabelField, RoleSet, entry_matches, glob_match};
use crate::role::RoleConditions;

/// What a role set gets on one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesAccess {
    /// Users it may be (certificate CN), sorted.
    pub users: Vec<String>,
    /// Groups it is in (certificate O), sorted.
    pub groups: Vec<String>,
}

impl KubernetesAccess {
    /// The user a certificate is issued for: `requested` if it is allowed;
    /// without one, the only allowed user. The error says what to change.
    pub fn choose_user(&self, cluster: &str, requested: Option<&str>) -> Result<String, String> {
        match (requested, self.users.as_slice()) {
            (Some(u), users) if users.iter().any(|a| a == u) => Ok(u.to_string()),
            (Some(u), []) => Err(format!(
                "user {u:?} is not allowed on kubernetes cluster {cluster:?}: the roles allow no kubernetes_users there"
            )),
            (Some(u), users) => Err(format!(
                "user {u:?} is not allowed on kubernetes cluster {cluster:?} (allowed: {})",
                users.join(", ")
            )),
            (None, [one]) => Ok(one.clone()),
            (None, []) => Err(format!(
                "the roles reach kubernetes cluster {cluster:?} but allow no user there: add kubernetes_users to a role whose kubernetes_labels select it"
            )),
            (None, users) => Err(format!(
                "several users are allowed on kubernetes cluster {cluster:?} ({}): choose one with `user:` in the output",
                users.join(", ")
            )),
        }
    }
}

impl RoleSet {
    /// The access on a cluster labelled `labels`, or `None` when no role
    /// reaches it (or a deny selector matches it).
    pub fn kubernetes_access(&self, labels: &BTreeMap<String, String>) -> Option<KubernetesAccess> {
        let field = LabelField::Kubernetes;
        let denied = self.roles.iter().any(|r| {
            field
                .of(&r.spec.deny)
                .iter()
                .any(|(k, pats)| entry_matches(k, pats, labels))
        });
        if denied {
            return None;
        }
        let matching: Vec<&RoleConditions> = self
            .roles
            .iter()
            .map(|r| &r.spec.allow)
            .filter(|a| {
                let sel = field.of(a);
                !sel.is_empty() && sel.iter().all(|(k, pats)| entry_matches(k, pats, labels))
            })
            .collect();
        if matching.is_empty() {
            return None;
        }
        let pick = |list: fn(&RoleConditions) -> &Vec<String>| -> Vec<String> {
            let denied: Vec<&String> = self.roles.iter().flat_map(|r| list(&r.spec.deny)).collect();
            matching
                .iter()
                .flat_map(|a| list(a).iter())
                .filter(|v| !denied.iter().any(|d| glob_match(d, v)))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        Some(KubernetesAccess {
            users: pick(|c| &c.kubernetes_users),
            groups: pick(|c| &c.kubernetes_groups),
        })
    }

    /// The Kubernetes users and groups `allow` grants that this set does not
    /// hold: each must be held by one role whose selector covers the granted
    /// one (any role, when `allow` has no selector: a lifted deny applies
    /// everywhere), and not be denied to this set. (`kubernetes_labels`
    /// itself is checked with the other label selectors.)
    pub(super) fn uncovered_kubernetes(&self, allow: &RoleConditions) -> Vec<String> {
        let mut out = Vec::new();
        type ListOf = fn(&RoleConditions) -> &Vec<String>;
        for (name, list) in [
            ("kubernetes_groups", (|c| &c.kubernetes_groups) as ListOf),
            ("kubernetes_users", (|c| &c.kubernetes_users) as ListOf),
        ] {
            for v in list(allow) {
                let denied = self
                    .roles
                    .iter()
                    .any(|r| list(&r.spec.deny).iter().any(|d| glob_match(d, v)));
                let held = !denied
                    && self.roles.iter().any(|r| {
                        let a = &r.spec.allow;
                        (allow.kubernetes_labels.is_empty()
                            || selector_covers(&a.kubernetes_labels, &allow.kubernetes_labels))
                            && list(a).iter().any(|q| pattern_covers(q, v))
                    });
                if !held {
                    out.push(format!("{name} {v:?}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::RoleSpecRef;
    use crate::rbac::tests::{labels, role, sel, strs};

    #[test]
    fn users_and_groups_come_from_the_roles_that_select_the_cluster() {
        let prod = role(|s| {
            s.allow.kubernetes_labels = sel(&[("env", &["prod"])]);
            s.allow.kubernetes_groups = strs(&["deployers"]);
            s.allow.kubernetes_users = strs(&["ci"]);
        });
        let dev = role(|s| {
            s.allow.kubernetes_labels = sel(&[("env", &["dev"])]);
            s.allow.kubernetes_groups = strs(&["admins"]);
            s.allow.kubernetes_users = strs(&["ci", "dev"]);
        });
        // Users without labels grant nothing.
        let loose = role(|s| s.allow.kubernetes_groups = strs(&["system:masters"]));
        let set = RoleSet::new(vec![prod, dev, loose]);
        let a = set.kubernetes_access(&labels(&[("env", "prod")])).unwrap();
        assert_eq!(a.users, ["ci"]);
        assert_eq!(a.groups, ["deployers"]);
        let a = set.kubernetes_access(&labels(&[("env", "dev")])).unwrap();
        assert_eq!(a.users, ["ci", "dev"]);
        assert_eq!(a.groups, ["admins"]);
        assert_eq!(set.kubernetes_access(&labels(&[("env", "qa")])), None);
        assert_eq!(set.kubernetes_access(&labels(&[])), None);
    }

    #[test]
    fn deny_wins() {
        let all = role(|s| {
            s.allow.kubernetes_labels = sel(&[("*", &["*"])]);
            s.allow.kubernetes_groups = strs(&["deployers", "system:masters"]);
            s.allow.kubernetes_users = strs(&["ci", "root"]);
        });
        let no_system = role(|s| {
            s.deny.kubernetes_groups = strs(&["system:*"]);
            s.deny.kubernetes_users = strs(&["root"]);
            s.deny.kubernetes_labels = sel(&[("tier", &["secret"])]);
        });
        let set = RoleSet::new(vec![all, no_system]);
        let a = set.kubernetes_access(&labels(&[("env", "prod")])).unwrap();
        assert_eq!(a.groups, ["deployers"]);
        assert_eq!(a.users, ["ci"]);
        assert_eq!(
            set.kubernetes_access(&labels(&[("env", "prod"), ("tier", "secret")])),
            None
        );
    }

    #[test]
    fn choosing_the_user() {
        let one = KubernetesAccess {
            users: strs(&["ci"]),
            groups: vec![],
        };
        assert_eq!(one.choose_user("prod", None).unwrap(), "ci");
        assert_eq!(one.choose_user("prod", Some("ci")).unwrap(), "ci");
        let e = one.choose_user("prod", Some("root")).unwrap_err();
        assert!(
            e.contains("\"root\" is not allowed") && e.contains("ci"),
            "{e}"
        );
        let two = KubernetesAccess {
            users: strs(&["a", "b"]),
            groups: vec![],
        };
        let e = two.choose_user("prod", None).unwrap_err();
        assert!(e.contains("user:") && e.contains("a, b"), "{e}");
        let none = KubernetesAccess::default();
        let e = none.choose_user("prod", None).unwrap_err();
        assert!(e.contains("kubernetes_users"), "{e}");
    }

    #[test]
    fn escalation_needs_the_same_users_groups_and_clusters() {
        let holder = RoleSet::new(vec![
            role(|s| {
                s.allow.kubernetes_labels = sel(&[("env", &["prod", "dev"])]);
                s.allow.kubernetes_groups = strs(&["deployers"]);
                s.allow.kubernetes_users = strs(&["ci"]);
            }),
            role(|s| s.deny.kubernetes_groups = strs(&["system:*"])),
        ]);
        let grant = |f: &dyn Fn(&mut RoleConditions)| {
            let r = role(|s| f(&mut s.allow));
            holder.uncovered(&RoleSpecRef::of(&r.spec))
        };
        assert!(
            grant(&|a| {
                a.kubernetes_labels = sel(&[("env", &["prod"])]);
                a.kubernetes_groups = strs(&["deployers"]);
                a.kubernetes_users = strs(&["ci"]);
            })
            .is_empty()
        );
        assert_eq!(
            grant(&|a| {
                a.kubernetes_labels = sel(&[("env", &["prod"])]);
                a.kubernetes_groups = strs(&["admins"]);
            }),
            ["kubernetes_groups \"admins\""]
        );
        assert_eq!(
            grant(&|a| {
                a.kubernetes_labels = sel(&[("env", &["prod"])]);
                a.kubernetes_groups = strs(&["system:masters"]);
            }),
            ["kubernetes_groups \"system:masters\""],
            "denied to the granter"
        );
        assert_eq!(
            grant(&|a| {
                a.kubernetes_labels = sel(&[("env", &["qa"])]);
                a.kubernetes_users = strs(&["ci"]);
            }),
            ["kubernetes_labels env=qa", "kubernetes_users \"ci\""]
        );
        // Lifting a deny of a group the granter does not hold.
        let old = RoleConditions {
            kubernetes_groups: strs(&["admins"]),
            ..Default::default()
        };
        let lifted = crate::rbac::lifted_denies(&old, &RoleConditions::default());
        let empty = RoleConditions::default();
        let r = RoleSpecRef {
            allow: &lifted,
            deny: &empty,
            options: None,
        };
        assert_eq!(holder.uncovered(&r), ["kubernetes_groups \"admins\""]);
    }
}
