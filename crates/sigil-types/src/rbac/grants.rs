//! Granting: what a role (or lifting a deny) would give that a role set
//! does not hold. The admin API refuses such grants (no escalation).

use super::ssh::{SSH_FLAGS, host_pattern_matches};
use super::{LabelField, RoleSet, glob_match};
use crate::role::Cidr;
use crate::role::{RoleConditions, RoleOptions};
use std::collections::BTreeMap;

/// What granting a role (or lifting its denies) would give that the holder
/// of a [`RoleSet`] does not hold itself: the Kubernetes RBAC escalation rule,
/// "you may only grant what you already have". Conservative: a wildcard is
/// covered only by a wildcard, a glob only by `*` or the same glob, and a
/// holder with deny entries may only grant roles that carry the same denies.
impl RoleSet {
    /// Each permission in `role` (its allow side, under the holder's denies)
    /// that this set does not hold, readably; empty when `role` is covered.
    pub fn uncovered(&self, role: &RoleSpecRef<'_>) -> Vec<String> {
        let mut out = Vec::new();
        let (allow, deny) = (role.allow, role.deny);
        for rule in &allow.rules {
            for r in expand(&rule.resources, crate::role::RULE_RESOURCES) {
                for v in expand(&rule.verbs, crate::role::KNOWN_VERBS) {
                    if !self.allows(r, v) {
                        out.push(format!("rule {v} on {r}"));
                    }
                }
            }
        }
        let logins = self.logins();
        for l in &allow.logins {
            if !logins.contains(l) {
                out.push(format!("login {l:?}"));
            }
        }
        for field in [
            LabelField::Node,
            LabelField::App,
            LabelField::AppServer,
            LabelField::WorkloadIdentity,
            LabelField::Kubernetes,
            LabelField::Db,
            LabelField::DbServer,
        ] {
            let granted = field.of(allow);
            if !granted.is_empty()
                && !self
                    .roles
                    .iter()
                    .any(|r| selector_covers(field.of(&r.spec.allow), granted))
            {
                out.push(format!("{} {}", field.name(), show_selector(granted)));
            }
            for r in &self.roles {
                for (k, pats) in field.of(&r.spec.deny) {
                    if !granted.is_empty() && field.of(deny).get(k) != Some(pats) {
                        out.push(format!(
                            "{} without the deny {k}={pats:?} that binds the granter",
                            field.name()
                        ));
                    }
                }
            }
        }
        type ListOf = fn(&RoleConditions) -> &Vec<String>;
        for (name, list) in [
            ("db_users", (|c| &c.db_users) as ListOf),
            ("db_names", (|c| &c.db_names) as ListOf),
        ] {
            for p in list(allow) {
                let held = self
                    .roles
                    .iter()
                    .any(|r| list(&r.spec.allow).iter().any(|q| pattern_covers(q, p)));
                if !held {
                    out.push(format!("{name} {p:?}"));
                }
            }
            if !list(allow).is_empty() {
                for r in &self.roles {
                    for d in list(&r.spec.deny) {
                        if !list(deny).contains(d) {
                            out.push(format!(
                                "{name} without the deny {d:?} that binds the granter"
                            ));
                        }
                    }
                }
            }
        }
        for p in &allow.ssh_host_principals {
            let held = self.roles.iter().any(|r| {
                r.spec
                    .allow
                    .ssh_host_principals
                    .iter()
                    .any(|q| host_pattern_covers(q, p))
            });
            if !held {
                out.push(format!("ssh_host_principals {p:?}"));
            }
        }
        if !allow.ssh_host_principals.is_empty() {
            for r in &self.roles {
                for d in &r.spec.deny.ssh_host_principals {
                    if !deny.ssh_host_principals.contains(d) {
                        out.push(format!(
                            "ssh_host_principals without the deny {d:?} that binds the granter"
                        ));
                    }
                }
            }
        }
        out.extend(self.uncovered_kubernetes(allow));
        if let Some(options) = role.options {
            out.extend(self.uncovered_options(options));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Each SSH permission `options` gives its holders that this set's own
    /// certificates do not have: a caller may not hand out a certificate
    /// less restricted than its own. A flag counts as given when the role
    /// sets it `true`, or leaves it to a default of `true` (`ssh_pty`).
    /// A caller limited to source addresses may only give roles limited to
    /// addresses within its own (no list at all is "from anywhere").
    pub fn uncovered_options(&self, options: &RoleOptions) -> Vec<String> {
        let own = self.ssh_permissions();
        let mut out: Vec<String> = SSH_FLAGS
            .iter()
            .filter(|f| (f.of_role)(options).unwrap_or(f.default) && !(f.of_permissions)(&own))
            .map(|f| {
                let how = if (f.of_role)(options).is_none() {
                    ", by default"
                } else {
                    ""
                };
                format!("options.{}: true{how} (the caller's own is false)", f.name)
            })
            .collect();
        if let Some(own_src) = &own.source_address {
            let own_src = cidrs(own_src);
            let theirs = &options.ssh_source_address;
            if theirs.is_empty() {
                out.push(format!(
                    "options.ssh_source_address: unset, i.e. from anywhere (the caller's own certificates are limited to {})",
                    own_src.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ));
            }
            for c in theirs {
                let within = Cidr::parse(c).is_ok_and(|c| own_src.iter().any(|o| o.contains(&c)));
                if !within {
                    out.push(format!(
                        "options.ssh_source_address: {c} is outside the caller's own source addresses"
                    ));
                }
            }
        }
        out
    }
}

/// A role's allow and deny sides (and options), borrowed: what
/// [`RoleSet::uncovered`] checks.
#[derive(Clone, Copy, Debug)]
pub struct RoleSpecRef<'a> {
    /// What the role grants.
    pub allow: &'a RoleConditions,
    /// What it forbids.
    pub deny: &'a RoleConditions,
    /// Its options, whose SSH permissions are checked
    /// ([`RoleSet::uncovered_options`]); `None` checks none.
    pub options: Option<&'a RoleOptions>,
}

impl<'a> RoleSpecRef<'a> {
    /// Both sides and the options of `role`.
    pub fn of(role: &'a crate::role::RoleSpec) -> Self {
        RoleSpecRef {
            allow: &role.allow,
            deny: &role.deny,
            options: Some(&role.options),
        }
    }
}

impl RoleSet {
    /// What relaxing a role's options from `old` to `new` gives its holders
    /// that this set's own certificates do not have: each `ssh_*: false`
    /// that `new` drops (its holders may now get it from another role), and
    /// source addresses `new` allows beyond `old`'s list (all of them when
    /// `new` has none).
    pub fn uncovered_lift(&self, old: &RoleOptions, new: &RoleOptions) -> Vec<String> {
        let own = self.ssh_permissions();
        let mut out: Vec<String> = SSH_FLAGS
            .iter()
            .filter(|f| {
                (f.of_role)(old) == Some(false)
                    && (f.of_role)(new) != Some(false)
                    && !(f.of_permissions)(&own)
            })
            .map(|f| {
                format!(
                    "options.{}: false dropped (the caller's own is false)",
                    f.name
                )
            })
            .collect();
        let old_src = cidrs(&old.ssh_source_address);
        if let (Some(own_src), false) = (&own.source_address, old_src.is_empty()) {
            let own_src = cidrs(own_src);
            if new.ssh_source_address.is_empty() {
                out.push("options.ssh_source_address (removing it allows every address; the caller's own certificates are limited)".into());
            }
            for c in &new.ssh_source_address {
                let widened = !Cidr::parse(c).is_ok_and(|c| old_src.iter().any(|o| o.contains(&c)));
                let outside = !Cidr::parse(c).is_ok_and(|c| own_src.iter().any(|o| o.contains(&c)));
                if widened && outside {
                    out.push(format!(
                        "options.ssh_source_address: {c} is outside the caller's own source addresses"
                    ));
                }
            }
        }
        out
    }
}

fn cidrs(list: &[String]) -> Vec<Cidr> {
    list.iter().filter_map(|c| Cidr::parse(c).ok()).collect()
}

/// What lifting denies grants: the entries of `old` that `new` no longer
/// has, as an allow side (removing a deny hands its holders that permission).
pub fn lifted_denies(old: &RoleConditions, new: &RoleConditions) -> RoleConditions {
    let minus = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let minus_map = |a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>| {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    RoleConditions {
        logins: minus(&old.logins, &new.logins),
        node_labels: minus_map(&old.node_labels, &new.node_labels),
        db_users: minus(&old.db_users, &new.db_users),
        db_names: minus(&old.db_names, &new.db_names),
        db_labels: minus_map(&old.db_labels, &new.db_labels),
        db_server_labels: minus_map(&old.db_server_labels, &new.db_server_labels),
        app_labels: minus_map(&old.app_labels, &new.app_labels),
        app_server_labels: minus_map(&old.app_server_labels, &new.app_server_labels),
        workload_identity_labels: minus_map(
            &old.workload_identity_labels,
            &new.workload_identity_labels,
        ),
        rules: old
            .rules
            .iter()
            .filter(|r| !new.rules.contains(r))
            .cloned()
            .collect(),
        ssh_host_principals: minus(&old.ssh_host_principals, &new.ssh_host_principals),
        kubernetes_labels: minus_map(&old.kubernetes_labels, &new.kubernetes_labels),
        kubernetes_groups: minus(&old.kubernetes_groups, &new.kubernetes_groups),
        kubernetes_users: minus(&old.kubernetes_users, &new.kubernetes_users),
    }
}

/// `*` in a rule list stands for every known name and for `*` itself (so
/// that only a wildcard holder may grant a wildcard, which also covers names
/// added later).
fn expand<'a>(list: &'a [String], known: &'static [&'static str]) -> Vec<&'a str> {
    if list.iter().any(|x| x == "*") {
        known.iter().copied().chain(std::iter::once("*")).collect()
    } else {
        list.iter().map(String::as_str).collect()
    }
}

/// True if every label set `granted` matches is matched by `held`.
pub(super) fn selector_covers(
    held: &BTreeMap<String, Vec<String>>,
    granted: &BTreeMap<String, Vec<String>>,
) -> bool {
    !held.is_empty()
        && held.iter().all(|(k, held_pats)| {
            (k == "*" && held_pats.iter().any(|p| p == "*"))
                || granted.get(k).is_some_and(|gp| {
                    gp.iter()
                        .all(|g| held_pats.iter().any(|h| pattern_covers(h, g)))
                })
        })
}

/// True if glob `held` matches everything glob `granted` does (conservatively).
pub(super) fn pattern_covers(held: &str, granted: &str) -> bool {
    held == "*" || held == granted || (!granted.contains(['*', '?']) && glob_match(held, granted))
}

/// True if host pattern `held` matches everything host pattern `granted`
/// does. Host patterns have only `*` (no `?`), so `held` matching `granted`
/// read literally is exact: a `*` of `granted` can only be matched by a `*`.
fn host_pattern_covers(held: &str, granted: &str) -> bool {
    held == "*" || host_pattern_matches(held, granted)
}

fn show_selector(s: &BTreeMap<String, Vec<String>>) -> String {
    s.iter()
        .map(|(k, v)| format!("{k}={}", v.join("|")))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::tests::{role, sel};
    use crate::resource::Role;
    use crate::role::AdminRule;

    fn rule(r: &[&str], v: &[&str]) -> AdminRule {
        AdminRule {
            resources: r.iter().map(|s| s.to_string()).collect(),
            verbs: v.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn uncovered(holder: &[Role], granted: &Role) -> Vec<String> {
        RoleSet::new(holder.to_vec()).uncovered(&RoleSpecRef::of(&granted.spec))
    }

    #[test]
    fn escalation_rules_need_what_is_granted() {
        let bot_editor = role(|s| s.allow.rules = vec![rule(&["bot"], &["create", "update"])]);
        let admin = role(|s| s.allow.rules = vec![rule(&["*"], &["*"])]);
        // A partial admin cannot grant the full admin role, nor a wildcard verb.
        assert!(!uncovered(std::slice::from_ref(&bot_editor), &admin).is_empty());
        let bot_star = role(|s| s.allow.rules = vec![rule(&["bot"], &["*"])]);
        assert_eq!(
            uncovered(std::slice::from_ref(&bot_editor), &bot_star),
            [
                "rule * on bot",
                "rule delete on bot",
                "rule escalate on bot",
                "rule list on bot",
                "rule read on bot"
            ]
        );
        // What it holds, it may grant.
        assert!(uncovered(std::slice::from_ref(&bot_editor), &bot_editor).is_empty());
        assert!(uncovered(std::slice::from_ref(&admin), &admin).is_empty());
        // A deny binds the granter: */* minus lock delete cannot grant */*.
        let no_lock_delete = role(|s| s.deny.rules = vec![rule(&["lock"], &["delete"])]);
        assert_eq!(
            uncovered(&[admin.clone(), no_lock_delete.clone()], &admin),
            ["rule delete on lock"]
        );
        // A specific resource is covered by a wildcard holder.
        assert!(uncovered(&[admin], &bot_editor).is_empty());
    }

    #[test]
    fn escalation_logins_labels_and_db() {
        let holder = role(|s| {
            s.allow.logins = vec!["deploy".into(), "ci-{{ join.github.actor }}".into()];
            s.allow.node_labels = sel(&[("env", &["prod", "stag*"])]);
            s.allow.db_users = vec!["app_*".into()];
        });
        let ok = role(|s| {
            s.allow.logins = vec!["deploy".into(), "ci-{{ join.github.actor }}".into()];
            s.allow.node_labels = sel(&[("env", &["prod"]), ("team", &["web"])]);
            s.allow.db_users = vec!["app_ro".into()];
        });
        assert!(uncovered(std::slice::from_ref(&holder), &ok).is_empty());
        let too_much = role(|s| {
            s.allow.logins = vec!["root".into()];
            s.allow.node_labels = sel(&[("team", &["web"])]);
            s.allow.db_users = vec!["*".into()];
            s.allow.app_labels = sel(&[("*", &["*"])]);
        });
        assert_eq!(
            uncovered(std::slice::from_ref(&holder), &too_much),
            [
                "app_labels *=*",
                "db_users \"*\"",
                "login \"root\"",
                "node_labels team=web"
            ]
        );
        // A glob is not covered by a narrower glob.
        let wider = role(|s| s.allow.node_labels = sel(&[("env", &["*"])]));
        assert_eq!(
            uncovered(std::slice::from_ref(&holder), &wider),
            ["node_labels env=*"]
        );
        // A holder's label deny must travel with what it grants.
        let denied = role(|s| s.deny.node_labels = sel(&[("tier", &["secret"])]));
        let holder2 = [holder, denied.clone()];
        assert_eq!(uncovered(&holder2, &ok).len(), 1);
        let mut ok_with_deny = ok.clone();
        ok_with_deny.spec.deny.node_labels = sel(&[("tier", &["secret"])]);
        assert!(uncovered(&holder2, &ok_with_deny).is_empty());
    }

    #[test]
    fn escalation_database_labels() {
        let holder = role(|s| {
            s.allow.db_labels = sel(&[("env", &["prod"])]);
            s.allow.db_server_labels = sel(&[("env", &["prod"])]);
            s.allow.db_users = vec!["app_*".into()];
            s.allow.db_names = vec!["orders".into()];
        });
        let ok = role(|s| {
            s.allow.db_labels = sel(&[("env", &["prod"]), ("team", &["pay"])]);
            s.allow.db_users = vec!["app_ro".into()];
            s.allow.db_names = vec!["orders".into()];
        });
        assert!(uncovered(std::slice::from_ref(&holder), &ok).is_empty());
        let too_much = role(|s| {
            s.allow.db_labels = sel(&[("*", &["*"])]);
            s.allow.db_server_labels = sel(&[("env", &["*"])]);
            s.allow.db_names = vec!["*".into()];
        });
        assert_eq!(
            uncovered(std::slice::from_ref(&holder), &too_much),
            ["db_labels *=*", "db_names \"*\"", "db_server_labels env=*"]
        );
        // Dropping a db_labels deny grants what it denied.
        let denied = role(|s| s.deny.db_labels = sel(&[("env", &["prod"])]));
        let lifted = lifted_denies(&denied.spec.deny, &RoleConditions::default());
        assert_eq!(lifted.db_labels, sel(&[("env", &["prod"])]));
        let empty = RoleConditions::default();
        let r = RoleSpecRef {
            allow: &lifted,
            deny: &empty,
            options: None,
        };
        let plain = RoleSet::new(vec![role(|_| {})]);
        assert_eq!(plain.uncovered(&r), ["db_labels env=prod"]);
    }

    #[test]
    fn escalation_app_labels_and_app_server_labels() {
        let holder = role(|s| {
            s.allow.app_labels = sel(&[("env", &["prod"])]);
            s.deny.app_labels = sel(&[("tier", &["secret"])]);
        });
        let same = role(|s| {
            s.allow.app_labels = sel(&[("env", &["prod"])]);
            s.deny.app_labels = sel(&[("tier", &["secret"])]);
        });
        assert!(uncovered(std::slice::from_ref(&holder), &same).is_empty());
        // Wider, or without the deny that binds the granter.
        let wider = role(|s| s.allow.app_labels = sel(&[("env", &["*"])]));
        assert_eq!(
            uncovered(std::slice::from_ref(&holder), &wider),
            [
                "app_labels env=*",
                "app_labels without the deny tier=[\"secret\"] that binds the granter"
            ]
        );
        // Calling apps does not make one a proxy for them.
        let server = role(|s| s.allow.app_server_labels = sel(&[("env", &["prod"])]));
        assert_eq!(
            uncovered(std::slice::from_ref(&holder), &server),
            ["app_server_labels env=prod"]
        );
        // Lifting an app deny grants it.
        let old = RoleConditions {
            app_labels: sel(&[("tier", &["secret"])]),
            ..Default::default()
        };
        let lifted = lifted_denies(&old, &RoleConditions::default());
        assert_eq!(lifted.app_labels, old.app_labels);
    }

    #[test]
    fn lifting_a_deny_grants_it() {
        let old = RoleConditions {
            rules: vec![rule(&["lock"], &["delete"])],
            logins: vec!["root".into()],
            ..Default::default()
        };
        let new = RoleConditions::default();
        let lifted = lifted_denies(&old, &new);
        assert_eq!(lifted.rules, old.rules);
        assert_eq!(lifted.logins, ["root"]);
        assert_eq!(lifted_denies(&old, &old), RoleConditions::default());
        let admin = role(|s| s.allow.rules = vec![rule(&["*"], &["*"])]);
        let no_lock_delete = role(|s| s.deny.rules = vec![rule(&["lock"], &["delete"])]);
        let set = RoleSet::new(vec![admin, no_lock_delete]);
        let empty = RoleConditions::default();
        let lifted = lifted_denies(&old, &new);
        let r = RoleSpecRef {
            allow: &lifted,
            deny: &empty,
            options: None,
        };
        assert!(
            set.uncovered(&r)
                .contains(&"rule delete on lock".to_string())
        );
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn escalation_ssh_host_principals() {
        let holder = role(|s| {
            s.allow.ssh_host_principals = strs(&["*.example.test", "localhost", "127.0.0.*"]);
        });
        let ok = role(|s| {
            s.allow.ssh_host_principals = strs(&[
                "web1.example.test",
                "web-*.example.test",
                "*.example.test",
                "LOCALHOST",
                "127.0.0.1",
            ]);
        });
        assert!(uncovered(std::slice::from_ref(&holder), &ok).is_empty());
        let too_much = role(|s| {
            s.allow.ssh_host_principals = strs(&["*", "example.test", "*.test", "::1"]);
        });
        assert_eq!(
            uncovered(std::slice::from_ref(&holder), &too_much),
            [
                "ssh_host_principals \"*\"",
                "ssh_host_principals \"*.test\"",
                "ssh_host_principals \"::1\"",
                "ssh_host_principals \"example.test\"",
            ]
        );
        let star = role(|s| s.allow.ssh_host_principals = strs(&["*"]));
        assert!(uncovered(std::slice::from_ref(&star), &too_much).is_empty());
        // A holder's deny must travel with what it grants.
        let no_secret = role(|s| s.deny.ssh_host_principals = strs(&["secret.example.test"]));
        let bound = [holder, no_secret];
        assert_eq!(
            uncovered(&bound, &ok),
            ["ssh_host_principals without the deny \"secret.example.test\" that binds the granter"]
        );
        let mut ok_with_deny = ok.clone();
        ok_with_deny.spec.deny.ssh_host_principals = strs(&["secret.example.test"]);
        assert!(uncovered(&bound, &ok_with_deny).is_empty());
        // Dropping a deny grants what it denied.
        let lifted = lifted_denies(&ok_with_deny.spec.deny, &RoleConditions::default());
        assert_eq!(lifted.ssh_host_principals, ["secret.example.test"]);
        let empty = RoleConditions::default();
        let r = RoleSpecRef {
            allow: &lifted,
            deny: &empty,
            options: None,
        };
        assert!(RoleSet::new(bound.to_vec()).uncovered(&r).len() == 1);
        assert!(RoleSet::new(vec![star]).uncovered(&r).is_empty());
    }

    #[test]
    fn escalation_ssh_options() {
        let forwarding = role(|s| {
            s.options.ssh_port_forwarding = Some(true);
            s.options.ssh_agent_forwarding = Some(true);
        });
        let plain = role(|_| {});
        // The default caller (pty only) may not hand out forwarding.
        assert_eq!(
            uncovered(std::slice::from_ref(&plain), &forwarding),
            [
                "options.ssh_agent_forwarding: true (the caller's own is false)",
                "options.ssh_port_forwarding: true (the caller's own is false)",
            ]
        );
        assert!(uncovered(std::slice::from_ref(&forwarding), &forwarding).is_empty());
        // A caller restricted by another of its roles is restricted here too.
        let no_agent = role(|s| s.options.ssh_agent_forwarding = Some(false));
        assert_eq!(
            uncovered(&[forwarding.clone(), no_agent.clone()], &forwarding),
            ["options.ssh_agent_forwarding: true (the caller's own is false)"]
        );
        // Restrictions need nothing: false, a pty (the default) and source addresses.
        let restricted = role(|s| {
            s.options.ssh_pty = Some(true);
            s.options.ssh_x11_forwarding = Some(false);
            s.options.ssh_source_address = strs(&["10.0.0.0/8"]);
        });
        assert!(uncovered(std::slice::from_ref(&plain), &restricted).is_empty());
        let no_pty = role(|s| s.options.ssh_pty = Some(false));
        assert_eq!(
            uncovered(std::slice::from_ref(&no_pty), &restricted),
            ["options.ssh_pty: true (the caller's own is false)"]
        );
        // ...and a role silent on pty gives the default, a pty.
        assert_eq!(
            uncovered(std::slice::from_ref(&no_pty), &plain),
            ["options.ssh_pty: true, by default (the caller's own is false)"]
        );
        // A caller limited to addresses gives only roles limited within them.
        let in_ten = role(|s| s.options.ssh_source_address = strs(&["10.0.0.0/8"]));
        let in_ten_one = role(|s| s.options.ssh_source_address = strs(&["10.1.0.0/16"]));
        let elsewhere = role(|s| s.options.ssh_source_address = strs(&["192.0.2.0/24"]));
        let limited = std::slice::from_ref(&in_ten);
        assert!(uncovered(limited, &in_ten_one).is_empty());
        assert_eq!(uncovered(limited, &elsewhere).len(), 1);
        assert_eq!(
            uncovered(limited, &plain).len(),
            1,
            "no list is from anywhere"
        );
        // Lifting a `false` grants what it held back.
        let plain_set = RoleSet::new(vec![plain.clone()]);
        let lift = |set: &RoleSet, old: &Role, new: &Role| {
            set.uncovered_lift(&old.spec.options, &new.spec.options)
        };
        assert_eq!(lift(&plain_set, &no_agent, &plain).len(), 1);
        assert!(lift(&plain_set, &no_agent, &no_agent).is_empty());
        assert!(lift(&plain_set, &forwarding, &plain).is_empty());
        assert!(lift(&RoleSet::new(vec![forwarding.clone()]), &no_agent, &plain).is_empty());
        // Widening or dropping source addresses, by a limited caller.
        let ten_set = RoleSet::new(vec![in_ten.clone()]);
        assert!(
            lift(&ten_set, &in_ten_one, &in_ten).is_empty(),
            "within the caller's own"
        );
        assert_eq!(lift(&ten_set, &in_ten_one, &elsewhere).len(), 1);
        assert_eq!(lift(&ten_set, &in_ten_one, &plain).len(), 1);
        assert!(
            lift(&plain_set, &in_ten_one, &plain).is_empty(),
            "an unlimited caller may"
        );
    }
}
