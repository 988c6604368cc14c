//! Role evaluation: what a set of roles allows. Deny always wins.

use crate::resource::Role;
use crate::role::RoleConditions;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

mod database;
mod grants;
mod kube;
mod ssh;
pub use database::DatabaseGrant;
pub use grants::{RoleSpecRef, lifted_denies};
pub use kube::KubernetesAccess;
pub use ssh::{HostLogins, SshPermissions};

/// Which label selector of a role to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelField {
    /// `node_labels`.
    Node,
    /// `app_labels`.
    App,
    /// `app_server_labels`.
    AppServer,
    /// `workload_identity_labels`.
    WorkloadIdentity,
    /// `kubernetes_labels`.
    Kubernetes,
    /// `db_labels`.
    Db,
    /// `db_server_labels`.
    DbServer,
}

impl LabelField {
    fn name(self) -> &'static str {
        match self {
            LabelField::Node => "node_labels",
            LabelField::App => "app_labels",
            LabelField::AppServer => "app_server_labels",
            LabelField::WorkloadIdentity => "workload_identity_labels",
            LabelField::Kubernetes => "kubernetes_labels",
            LabelField::Db => "db_labels",
            LabelField::DbServer => "db_server_labels",
        }
    }

    fn of(self, c: &RoleConditions) -> &BTreeMap<String, Vec<String>> {
        match self {
            LabelField::Node => &c.node_labels,
            LabelField::App => &c.app_labels,
            LabelField::AppServer => &c.app_server_labels,
            LabelField::WorkloadIdentity => &c.workload_identity_labels,
            LabelField::Kubernetes => &c.kubernetes_labels,
            LabelField::Db => &c.db_labels,
            LabelField::DbServer => &c.db_server_labels,
        }
    }
}

/// The roles a bot holds, evaluated together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoleSet {
    roles: Vec<Role>,
}

impl RoleSet {
    /// A set over `roles`.
    pub fn new(roles: Vec<Role>) -> Self {
        RoleSet { roles }
    }

    /// The roles in the set.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// Allowed logins: union of `allow.logins` minus any `deny.logins`, sorted.
    pub fn logins(&self) -> Vec<String> {
        let denied: BTreeSet<&str> = self
            .roles
            .iter()
            .flat_map(|r| r.spec.deny.logins.iter().map(String::as_str))
            .collect();
        let allowed: BTreeSet<&str> = self
            .roles
            .iter()
            .flat_map(|r| r.spec.allow.logins.iter().map(String::as_str))
            .filter(|l| !denied.contains(l))
            .collect();
        allowed.into_iter().map(str::to_string).collect()
    }

    /// Allowed logins for one bot identity: `{{ join.* }}` and `{{ bot.* }}`
    /// templates in `allow.logins` / `deny.logins` rendered from `attrs`
    /// (the identity's verified join attributes), then allow minus deny. A
    /// login whose attribute is missing, or whose rendered value is not a
    /// valid login, is left out — never granted half-rendered.
    pub fn logins_with(&self, attrs: &BTreeMap<String, String>) -> Vec<String> {
        let render = |list: fn(&Role) -> &Vec<String>| -> BTreeSet<String> {
            self.roles
                .iter()
                .flat_map(|r| list(r).iter())
                .filter_map(|l| render_login(l, attrs))
                .collect()
        };
        let denied = render(|r| &r.spec.deny.logins);
        render(|r| &r.spec.allow.logins)
            .into_iter()
            .filter(|l| !denied.contains(l))
            .collect()
    }

    /// The smallest `options.max_ttl` over the roles, or `default` if none sets one.
    pub fn max_ttl(&self, default: Duration) -> Duration {
        self.roles
            .iter()
            .filter_map(|r| r.spec.options.max_ttl.map(|t| t.0))
            .min()
            .unwrap_or(default)
    }

    /// True if some allow rule grants `verb` on `resource_kind` and no deny rule matches.
    pub fn allows(&self, resource_kind: &str, verb: &str) -> bool {
        let denied = self.roles.iter().any(|r| {
            r.spec
                .deny
                .rules
                .iter()
                .any(|rule| rule.matches(resource_kind, verb))
        });
        !denied
            && self.roles.iter().any(|r| {
                r.spec
                    .allow
                    .rules
                    .iter()
                    .any(|rule| rule.matches(resource_kind, verb))
            })
    }

    /// True if some role's allow selector matches `labels` (every key present
    /// with a matching value; an empty selector matches nothing) and no role's
    /// deny selector matches (any one key/value matching is enough).
    /// The key `*` with value `*` matches everything.
    pub fn labels_match(&self, which: LabelField, labels: &BTreeMap<String, String>) -> bool {
        let denied = self.roles.iter().any(|r| {
            which
                .of(&r.spec.deny)
                .iter()
                .any(|(key, patterns)| entry_matches(key, patterns, labels))
        });
        if denied {
            return false;
        }
        self.roles.iter().any(|r| {
            let selector = which.of(&r.spec.allow);
            !selector.is_empty()
                && selector
                    .iter()
                    .all(|(key, patterns)| entry_matches(key, patterns, labels))
        })
    }

    /// True if `db_user` is allowed (globs) and not denied.
    pub fn allows_db_user(&self, db_user: &str) -> bool {
        self.allows_value(db_user, |c| &c.db_users)
    }

    /// True if `db_name` is allowed (globs) and not denied.
    pub fn allows_db_name(&self, db_name: &str) -> bool {
        self.allows_value(db_name, |c| &c.db_names)
    }

    fn allows_value(&self, value: &str, list: impl Fn(&RoleConditions) -> &Vec<String>) -> bool {
        let any = |c: &RoleConditions| list(c).iter().any(|p| glob_match(p, value));
        !self.roles.iter().any(|r| any(&r.spec.deny))
            && self.roles.iter().any(|r| any(&r.spec.allow))
    }
}

/// One selector entry against a label set. Key `*` means "any label": with
/// value `*` it matches everything (even no labels), otherwise any label value
/// matching one of the patterns.
pub(crate) fn entry_matches(
    key: &str,
    patterns: &[String],
    labels: &BTreeMap<String, String>,
) -> bool {
    let value_ok = |v: &String| patterns.iter().any(|p| glob_match(p, v));
    if key == "*" {
        patterns.iter().any(|p| p == "*") || labels.values().any(value_ok)
    } else {
        labels.get(key).is_some_and(value_ok)
    }
}

/// A login with its `{{ name }}` placeholders replaced from `attrs`; `None`
/// when an attribute is missing or the result is not a valid login.
pub fn render_login(login: &str, attrs: &BTreeMap<String, String>) -> Option<String> {
    if !login.contains("{{") {
        return Some(login.to_string());
    }
    let pieces = crate::workload_identity::template::parse(login).ok()?;
    let mut out = String::new();
    for p in pieces {
        match p {
            crate::workload_identity::template::Piece::Literal(t) => out.push_str(t),
            crate::workload_identity::template::Piece::Attribute(name) => {
                out.push_str(attrs.get(name)?)
            }
        }
    }
    crate::role::validate_login(&out).ok()?;
    Some(out)
}

/// Glob match over characters: `*` matches any run (including empty), `?`
/// exactly one character; everything else is literal. Linear-time backtracking.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0usize, 0usize);
    // Position of the last `*` seen and the value index it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == v[vi])) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            // Let the last `*` absorb one more character and retry.
            star = Some((sp, sv + 1));
            pi = sp + 1;
            vi = sv + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;
    use crate::resource::Metadata;
    use crate::role::{AdminRule, RoleSpec};
    use proptest::prelude::*;

    pub(super) fn role(f: impl FnOnce(&mut RoleSpec)) -> Role {
        let mut spec = RoleSpec::default();
        f(&mut spec);
        Role::new(Metadata::named("r"), spec)
    }

    /// A label set (`k: v` pairs) as resources carry it.
    pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(super) fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    pub(super) fn sel(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn logins_union_minus_deny() {
        let a = role(|s| s.allow.logins = vec!["ubuntu".into(), "root".into()]);
        let b = role(|s| {
            s.allow.logins = vec!["deploy".into(), "ubuntu".into()];
            s.deny.logins = vec!["root".into()];
        });
        assert_eq!(
            RoleSet::new(vec![a.clone(), b]).logins(),
            ["deploy", "ubuntu"]
        );
        assert_eq!(RoleSet::new(vec![a]).logins(), ["root", "ubuntu"]);
        assert!(RoleSet::default().logins().is_empty());
    }

    #[test]
    fn login_templates_render_from_join_attributes() {
        let a = role(|s| {
            s.allow.logins = vec![
                "ubuntu".into(),
                "ci-{{ join.github.actor }}".into(),
                "{{join.kubernetes.service_account.name}}".into(),
            ];
            s.deny.logins = vec!["ci-{{ join.github.actor }}-x".into()];
        });
        let set = RoleSet::new(vec![a]);
        let mut attrs = BTreeMap::new();
        attrs.insert("join.github.actor".to_string(), "octocat".to_string());
        // The missing attribute drops its login; the others render.
        assert_eq!(set.logins_with(&attrs), ["ci-octocat", "ubuntu"]);
        // A value that is not a valid login is never granted.
        attrs.insert("join.github.actor".to_string(), "a b".to_string());
        assert_eq!(set.logins_with(&attrs), ["ubuntu"]);
        assert_eq!(
            render_login("plain", &BTreeMap::new()).as_deref(),
            Some("plain")
        );
        assert!(crate::role::validate_login_template("{{ workload.unix.uid }}").is_err());
        assert!(crate::role::validate_login_template("ci-{{ join.github.actor }}").is_ok());
        assert!(crate::role::validate_login_template("{{ join.x").is_err());
    }

    #[test]
    fn max_ttl_is_minimum() {
        let ttl = |m| role(|s| s.options.max_ttl = Some(HumanDuration(Duration::from_secs(m))));
        let none = role(|_| {});
        let default = Duration::from_secs(7);
        assert_eq!(RoleSet::new(vec![none.clone()]).max_ttl(default), default);
        assert_eq!(
            RoleSet::new(vec![ttl(600), none, ttl(300)]).max_ttl(default),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn rules_with_wildcards_and_deny() {
        let rule = |r: &[&str], v: &[&str]| AdminRule {
            resources: r.iter().map(|s| s.to_string()).collect(),
            verbs: v.iter().map(|s| s.to_string()).collect(),
        };
        let admin = role(|s| s.allow.rules = vec![rule(&["*"], &["*"])]);
        let no_delete_locks = role(|s| s.deny.rules = vec![rule(&["lock"], &["delete"])]);
        let reader = role(|s| s.allow.rules = vec![rule(&["bot", "role"], &["list", "read"])]);
        let set = RoleSet::new(vec![admin, no_delete_locks]);
        assert!(set.allows("lock", "create"));
        assert!(set.allows("bot", "delete"));
        assert!(!set.allows("lock", "delete"));
        let set = RoleSet::new(vec![reader]);
        assert!(set.allows("bot", "read"));
        assert!(!set.allows("bot", "create"));
        assert!(!set.allows("token", "read"));
        assert!(!RoleSet::default().allows("bot", "read"));
    }

    #[test]
    fn labels_allow_deny_and_empty() {
        let prod =
            role(|s| s.allow.node_labels = sel(&[("env", &["prod", "stag*"]), ("team", &["web"])]));
        let set = RoleSet::new(vec![prod.clone()]);
        assert!(set.labels_match(
            LabelField::Node,
            &labels(&[("env", "prod"), ("team", "web"), ("x", "y")])
        ));
        assert!(set.labels_match(
            LabelField::Node,
            &labels(&[("env", "staging"), ("team", "web")])
        ));
        assert!(
            !set.labels_match(LabelField::Node, &labels(&[("env", "prod")])),
            "all keys required"
        );
        assert!(!set.labels_match(
            LabelField::Node,
            &labels(&[("env", "dev"), ("team", "web")])
        ));
        assert!(
            !set.labels_match(
                LabelField::App,
                &labels(&[("env", "prod"), ("team", "web")])
            ),
            "empty allow"
        );

        let everything = role(|s| s.allow.app_labels = sel(&[("*", &["*"])]));
        let set = RoleSet::new(vec![everything.clone()]);
        assert!(set.labels_match(LabelField::App, &labels(&[])));
        assert!(set.labels_match(LabelField::App, &labels(&[("a", "b")])));

        let deny_secret =
            role(|s| s.deny.app_labels = sel(&[("tier", &["secret"]), ("zone", &["x"])]));
        let set = RoleSet::new(vec![everything, deny_secret]);
        assert!(
            !set.labels_match(LabelField::App, &labels(&[("tier", "secret")])),
            "any deny pair wins"
        );
        assert!(!set.labels_match(
            LabelField::App,
            &labels(&[("zone", "x"), ("tier", "public")])
        ));
        assert!(set.labels_match(LabelField::App, &labels(&[("tier", "public")])));

        let deny_all = role(|s| s.deny.node_labels = sel(&[("*", &["*"])]));
        assert!(!RoleSet::new(vec![prod, deny_all]).labels_match(
            LabelField::Node,
            &labels(&[("env", "prod"), ("team", "web")])
        ));
    }

    #[test]
    fn db_values() {
        let r = role(|s| {
            s.allow.db_users = vec!["app_*".into()];
            s.deny.db_users = vec!["app_admin".into()];
        });
        let set = RoleSet::new(vec![r]);
        assert!(set.allows_db_user("app_ro"));
        assert!(!set.allows_db_user("app_admin"));
        assert!(!set.allows_db_name("anything"));
    }

    #[test]
    fn glob_examples() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.example.*", "db.example.org"));
        assert!(!glob_match("a*b", "acbx"));
        assert!(glob_match("é?", "éü"));
        assert!(glob_match("**a", "xa"));
    }

    proptest! {
        #[test]
        fn literal_matches_only_itself(p in "[a-c.]{0,6}", v in "[a-c.]{0,6}") {
            prop_assert!(glob_match(&p, &p));
            prop_assert_eq!(glob_match(&p, &v), p == v);
        }

        #[test]
        fn star_matches_all(v in "\\PC*") {
            prop_assert!(glob_match("*", &v));
        }

        #[test]
        fn substring_replaced_by_star_matches(v in "[a-z?]{0,12}", a in 0usize..13, b in 0usize..13) {
            let chars: Vec<char> = v.chars().collect();
            let (lo, hi) = (a.min(b).min(chars.len()), a.max(b).min(chars.len()));
            let pattern: String =
                chars[..lo].iter().chain(std::iter::once(&'*')).chain(chars[hi..].iter()).collect();
            prop_assert!(glob_match(&pattern, &v), "{} vs {}", pattern, v);
        }
    }
}
