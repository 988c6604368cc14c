//! Database policy of a role set: which database users and names a bot may
//! get a client certificate for, on a database with given labels.
//!
//! Allow is per role: one role must match the database's labels
//! (`allow.db_labels`), the user (`allow.db_users`) and the database name
//! (`allow.db_names`) together, so a role granting `admin` on staging does
//! not combine with another granting anything on prod. Deny applies
//! everywhere and wins: any role whose `deny.db_labels` matches the
//! database (any one entry), or whose `deny.db_users` / `deny.db_names`
//! matches the user or name, refuses.

use super::{LabelField, RoleSet, entry_matches, glob_match};
use crate::role::RoleConditions;
use std::collections::{BTreeMap, BTreeSet};

/// What a role set grants on one database (for `sigil db ls`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DatabaseGrant {
    /// `allow.db_users` patterns of the roles matching the database.
    pub users: Vec<String>,
    /// `allow.db_names` patterns of those roles.
    pub names: Vec<String>,
    /// `deny.db_users` patterns of every role.
    pub denied_users: Vec<String>,
    /// `deny.db_names` patterns of every role.
    pub denied_names: Vec<String>,
}

fn any_glob(list: &[String], v: &str) -> bool {
    list.iter().any(|p| glob_match(p, v))
}

impl RoleSet {
    fn db_labels_denied(&self, labels: &BTreeMap<String, String>) -> bool {
        self.roles.iter().any(|r| {
            r.spec
                .deny
                .db_labels
                .iter()
                .any(|(k, pats)| entry_matches(k, pats, labels))
        })
    }

    fn db_allow_matches(c: &RoleConditions, labels: &BTreeMap<String, String>) -> bool {
        !c.db_labels.is_empty()
            && c.db_labels
                .iter()
                .all(|(k, pats)| entry_matches(k, pats, labels))
    }

    /// `Ok` if these roles allow a client certificate for `user` on database
    /// `name` of a database labelled `labels`; else why not (readable).
    pub fn database_access(
        &self,
        labels: &BTreeMap<String, String>,
        user: &str,
        name: &str,
    ) -> Result<(), String> {
        if self.db_labels_denied(labels) {
            return Err("a role denies this database (deny.db_labels)".into());
        }
        if self
            .roles
            .iter()
            .any(|r| any_glob(&r.spec.deny.db_users, user))
        {
            return Err(format!(
                "a role denies database user {user:?} (deny.db_users)"
            ));
        }
        if self
            .roles
            .iter()
            .any(|r| any_glob(&r.spec.deny.db_names, name))
        {
            return Err(format!(
                "a role denies database name {name:?} (deny.db_names)"
            ));
        }
        let matching: Vec<&RoleConditions> = self
            .roles
            .iter()
            .map(|r| &r.spec.allow)
            .filter(|c| Self::db_allow_matches(c, labels))
            .collect();
        if matching.is_empty() {
            return Err("no role's db_labels match this database's labels".into());
        }
        if matching
            .iter()
            .any(|c| any_glob(&c.db_users, user) && any_glob(&c.db_names, name))
        {
            return Ok(());
        }
        if !matching.iter().any(|c| any_glob(&c.db_users, user)) {
            return Err(format!(
                "no role matching this database allows user {user:?} (allow.db_users)"
            ));
        }
        Err(format!(
            "no role matching this database allows user {user:?} on database {name:?} (allow.db_names)"
        ))
    }

    /// What these roles grant on a database labelled `labels`: `None` when
    /// nothing (no role's `db_labels` match, or a deny matches).
    pub fn database_grant(&self, labels: &BTreeMap<String, String>) -> Option<DatabaseGrant> {
        if self.db_labels_denied(labels) {
            return None;
        }
        let collect = |f: fn(&RoleConditions) -> &Vec<String>, allow: bool| -> Vec<String> {
            let set: BTreeSet<&String> = self
                .roles
                .iter()
                .filter(|r| !allow || Self::db_allow_matches(&r.spec.allow, labels))
                .flat_map(|r| f(if allow { &r.spec.allow } else { &r.spec.deny }).iter())
                .collect();
            set.into_iter().cloned().collect()
        };
        let g = DatabaseGrant {
            users: collect(|c| &c.db_users, true),
            names: collect(|c| &c.db_names, true),
            denied_users: collect(|c| &c.db_users, false),
            denied_names: collect(|c| &c.db_names, false),
        };
        (!g.users.is_empty() && !g.names.is_empty()).then_some(g)
    }

    /// True if these roles make their holder a server for a database
    /// labelled `labels` (`db_server_labels`; deny wins).
    pub fn allows_db_server(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels_match(LabelField::DbServer, labels)
    }
}

#[cfg(test)]
mod tests {
    use crate::rbac::RoleSet;
    use crate::rbac::tests::{labels, role, sel, strs};

    #[test]
    fn allow_needs_labels_user_and_name_in_one_role() {
        let prod_ro = role(|s| {
            s.allow.db_labels = sel(&[("env", &["prod"])]);
            s.allow.db_users = strs(&["app_ro"]);
            s.allow.db_names = strs(&["orders"]);
        });
        let staging_admin = role(|s| {
            s.allow.db_labels = sel(&[("env", &["staging"])]);
            s.allow.db_users = strs(&["admin"]);
            s.allow.db_names = strs(&["*"]);
        });
        let set = RoleSet::new(vec![prod_ro, staging_admin]);
        let prod = labels(&[("env", "prod")]);
        let staging = labels(&[("env", "staging")]);
        set.database_access(&prod, "app_ro", "orders").unwrap();
        set.database_access(&staging, "admin", "orders").unwrap();
        // Roles do not combine: admin is granted on staging only.
        let e = set.database_access(&prod, "admin", "orders").unwrap_err();
        assert!(e.contains("allow.db_users"), "{e}");
        let e = set.database_access(&prod, "app_ro", "billing").unwrap_err();
        assert!(e.contains("allow.db_names"), "{e}");
        let e = set
            .database_access(&labels(&[("env", "dev")]), "app_ro", "orders")
            .unwrap_err();
        assert!(e.contains("db_labels"), "{e}");
        // No db_labels at all grants nothing, whatever the users.
        let unlabelled = role(|s| {
            s.allow.db_users = strs(&["*"]);
            s.allow.db_names = strs(&["*"]);
        });
        assert!(
            RoleSet::new(vec![unlabelled])
                .database_access(&prod, "app_ro", "orders")
                .is_err()
        );
    }

    #[test]
    fn deny_wins() {
        let all = role(|s| {
            s.allow.db_labels = sel(&[("*", &["*"])]);
            s.allow.db_users = strs(&["*"]);
            s.allow.db_names = strs(&["*"]);
        });
        let prod = labels(&[("env", "prod")]);
        let set = RoleSet::new(vec![all.clone()]);
        set.database_access(&prod, "postgres", "orders").unwrap();
        for deny in [
            role(|s| s.deny.db_users = strs(&["postgres"])),
            role(|s| s.deny.db_names = strs(&["ord*"])),
            role(|s| s.deny.db_labels = sel(&[("env", &["prod"])])),
        ] {
            let set = RoleSet::new(vec![all.clone(), deny]);
            assert!(set.database_access(&prod, "postgres", "orders").is_err());
            assert!(set.database_access(&prod, "postgres", "orders").is_err());
        }
        let no_prod = role(|s| s.deny.db_labels = sel(&[("env", &["prod"])]));
        let set = RoleSet::new(vec![all.clone(), no_prod]);
        assert_eq!(set.database_grant(&prod), None);
        assert!(
            set.database_grant(&labels(&[("env", "dev")]))
                .is_some_and(|g| g.users == ["*"])
        );
    }

    #[test]
    fn server_labels() {
        let host = role(|s| s.allow.db_server_labels = sel(&[("env", &["prod"])]));
        let set = RoleSet::new(vec![host.clone()]);
        assert!(set.allows_db_server(&labels(&[("env", "prod")])));
        assert!(!set.allows_db_server(&labels(&[("env", "dev")])));
        // db_labels (client access) does not make a server.
        let client = role(|s| s.allow.db_labels = sel(&[("env", &["prod"])]));
        assert!(!RoleSet::new(vec![client]).allows_db_server(&labels(&[("env", "prod")])));
        let deny = role(|s| s.deny.db_server_labels = sel(&[("env", &["*"])]));
        assert!(!RoleSet::new(vec![host, deny]).allows_db_server(&labels(&[("env", "prod")])));
    }
}
