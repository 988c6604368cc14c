//! `role`: allow/deny policy.

use crate::duration::HumanDuration;
use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

mod ssh;
pub use ssh::{Cidr, validate_host_principal};

/// Admin API verbs a rule may grant (besides `*`). `escalate` lets a caller
/// grant what it does not hold itself (roles, bots, tokens for more
/// privileged bots): it is admin-equivalent, and `*` includes it.
pub const KNOWN_VERBS: &[&str] = &["list", "read", "create", "update", "delete", "escalate"];

/// The one RBAC vocabulary: every resource name the admin API authorizes,
/// and exactly the names a rule may name (besides `*`). Includes names that
/// are not stored kinds (`audit` for the audit log, `status` for `sigil status`).
pub const RULE_RESOURCES: &[&str] = &[
    "role",
    "bot",
    "token",
    "lock",
    "bot_instance",
    "workload_identity",
    "workload_identity_x509_revocation",
    "audit",
    "status",
    "cert_authority",
    "kubernetes_cluster",
    "database",
    "spiffe_federation",
    "app",
];

/// Body of a `role`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// What the role grants.
    #[serde(default)]
    pub allow: RoleConditions,
    /// What the role forbids; deny always wins over any allow.
    #[serde(default)]
    pub deny: RoleConditions,
    /// Options such as the maximum credential TTL.
    #[serde(default)]
    pub options: RoleOptions,
}

/// One side (allow or deny) of a role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleConditions {
    /// SSH logins (exact names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logins: Vec<String>,
    /// Node label selector; values are globs. YAML may give a string or a list.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub node_labels: BTreeMap<String, Vec<String>>,
    /// Database users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_users: Vec<String>,
    /// Database names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_names: Vec<String>,
    /// Database label selector: which `database` resources `db_users` and
    /// `db_names` apply to (client certificates).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub db_labels: BTreeMap<String, Vec<String>>,
    /// Database label selector for the machine running the database: server
    /// certificates and the database's CRL (the `database-server` output).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub db_server_labels: BTreeMap<String, Vec<String>>,
    /// App label selector: which `app` resources a caller may reach
    /// through `sigil proxy`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub app_labels: BTreeMap<String, Vec<String>>,
    /// App label selector for a proxy: which `app` resources a bot holding
    /// this role may serve as `sigil proxy` (it sees who calls them and signs
    /// their identity JWTs).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub app_server_labels: BTreeMap<String, Vec<String>>,
    /// Workload identity label selector.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub workload_identity_labels: BTreeMap<String, Vec<String>>,
    /// Admin API rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AdminRule>,
    /// SSH host principals (host names, IPs, `*` globs such as
    /// `*.example.test`) a host holding this role may get a host certificate for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_principals: Vec<String>,
    /// Kubernetes cluster label selector (`kubernetes_cluster` labels).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub kubernetes_labels: BTreeMap<String, Vec<String>>,
    /// Kubernetes groups (certificate O) on the clusters this role's
    /// `kubernetes_labels` select; in deny, globs removed everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_groups: Vec<String>,
    /// Kubernetes users (certificate CN), like `kubernetes_groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_users: Vec<String>,
}

/// Grants (or denies) `verbs` on `resources` in the admin API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminRule {
    /// Kind names (see [`RULE_RESOURCES`]) or `*`.
    pub resources: Vec<String>,
    /// `list`, `read`, `create`, `update`, `delete` or `*`.
    pub verbs: Vec<String>,
}

impl AdminRule {
    /// True if this rule covers `resource_kind` × `verb` (with `*` wildcards).
    pub fn matches(&self, resource_kind: &str, verb: &str) -> bool {
        self.resources
            .iter()
            .any(|r| r == "*" || r == resource_kind)
            && self.verbs.iter().any(|v| v == "*" || v == verb)
    }
}

/// Role options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleOptions {
    /// Upper bound on credential TTL for holders of this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<HumanDuration>,
    /// `permit-port-forwarding` in SSH user certificates (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port_forwarding: Option<bool>,
    /// `permit-agent-forwarding` (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_agent_forwarding: Option<bool>,
    /// `permit-X11-forwarding` (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_x11_forwarding: Option<bool>,
    /// `permit-pty` (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_pty: Option<bool>,
    /// `permit-user-rc` (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user_rc: Option<bool>,
    /// CIDRs SSH user certificates may be used from (the `source-address`
    /// critical option); across roles, only addresses every such role allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_source_address: Vec<String>,
}

/// Deserializes a label map whose values are either one string or a list.
pub(crate) fn de_label_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    struct OneOrMany(Vec<String>);
    impl<'de> Deserialize<'de> for OneOrMany {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OneOrMany;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a label value string or a list of strings")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                    Ok(OneOrMany(vec![v.to_string()]))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                    let mut out = Vec::new();
                    while let Some(s) = seq.next_element::<String>()? {
                        out.push(s);
                    }
                    Ok(OneOrMany(out))
                }
            }
            d.deserialize_any(V)
        }
    }
    struct M;
    impl<'de> Visitor<'de> for M {
        type Value = BTreeMap<String, Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of label name to value or list of values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, OneOrMany(v))) = map.next_entry::<String, OneOrMany>()? {
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(M)
}

/// Checks a login in a role: a plain login, or a template whose
/// placeholders name `join.*` or `bot.*` attributes (e.g.
/// `ci-{{ join.github.actor }}`), rendered per identity at issuance.
pub fn validate_login_template(login: &str) -> Result<(), String> {
    if !login.contains("{{") {
        return validate_login(login);
    }
    let pieces = crate::workload_identity::template::parse(login).map_err(|e| e.to_string())?;
    for name in crate::workload_identity::template::names(&pieces) {
        if !(name.starts_with("join.") || name.starts_with("bot.")) {
            return Err(format!(
                "login template uses {name:?}: only join.* and bot.* attributes are available to roles"
            ));
        }
    }
    validate_login(&crate::workload_identity::template::render_sample(&pieces))
}

/// Maximum length of a login.
pub const MAX_LOGIN_LEN: usize = 255;

/// Checks a login (SSH user, lock target), on every path: a POSIX-style
/// user name, 1..=255 ASCII characters of `[A-Za-z0-9._@-]`, starting with
/// a letter, digit or `_`, optionally ending in `$` (machine accounts). So
/// no `*` (logins are exact grants), no separators (`:`, `,`, spaces), no
/// control characters, and no Unicode at all, which rules out zero-width
/// and bidi-override characters that make two logins look alike.
pub fn validate_login(login: &str) -> Result<(), String> {
    if login.is_empty() {
        return Err("login must not be empty".into());
    }
    if login == "*" {
        return Err("wildcard \"*\" is not allowed for logins: list each login".into());
    }
    let shown = crate::text::escape_unsafe(login);
    if login.len() > MAX_LOGIN_LEN {
        return Err(format!("login is longer than {MAX_LOGIN_LEN} bytes"));
    }
    let body = login.strip_suffix('$').unwrap_or(login);
    if let Some(c) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        let what = if crate::text::is_unsafe_char(c) {
            format!("U+{:04X}", c as u32)
        } else {
            format!("{c:?}")
        };
        return Err(format!(
            "login \"{shown}\" contains forbidden character {what}: logins are letters, digits and . _ @ - (and a final $)"
        ));
    }
    if !body.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "login \"{shown}\" must start with a letter, digit or _"
        ));
    }
    Ok(())
}

fn validate_conditions(side: &str, c: &RoleConditions) -> Result<(), ValidationError> {
    let p = format!("spec.{side}");
    for (i, login) in c.logins.iter().enumerate() {
        validate_login_template(login)
            .map_err(|m| ValidationError::new(format!("{p}.logins[{i}]"), m))?;
    }
    for (name, list) in [("db_users", &c.db_users), ("db_names", &c.db_names)] {
        for (i, v) in list.iter().enumerate() {
            crate::database::validate_db_pattern(name, v)
                .map_err(|m| ValidationError::new(format!("{p}.{name}[{i}]"), m))?;
        }
    }
    for (name, map) in [
        ("node_labels", &c.node_labels),
        ("app_labels", &c.app_labels),
        ("app_server_labels", &c.app_server_labels),
        ("workload_identity_labels", &c.workload_identity_labels),
        ("kubernetes_labels", &c.kubernetes_labels),
        ("db_labels", &c.db_labels),
        ("db_server_labels", &c.db_server_labels),
    ] {
        for (k, values) in map {
            // `*` matches any label name.
            if k != "*" {
                crate::resource::check_label_key(k)
                    .map_err(|m| ValidationError::new(format!("{p}.{name}"), m))?;
            }
            for (i, v) in values.iter().enumerate() {
                crate::resource::check_label_value(v)
                    .map_err(|m| ValidationError::new(format!("{p}.{name}.{k}[{i}]"), m))?;
            }
            if values.is_empty() {
                return Err(ValidationError::new(
                    format!("{p}.{name}.{k}"),
                    "label value list must not be empty (use \"*\" to match any value)",
                ));
            }
        }
    }
    for (name, list) in [
        ("kubernetes_groups", &c.kubernetes_groups),
        ("kubernetes_users", &c.kubernetes_users),
    ] {
        for (i, v) in list.iter().enumerate() {
            crate::kubernetes_cluster::validate_subject_name(v, side == "deny")
                .map_err(|m| ValidationError::new(format!("{p}.{name}[{i}]"), m))?;
        }
    }
    for (i, h) in c.ssh_host_principals.iter().enumerate() {
        validate_host_principal(h, true)
            .map_err(|m| ValidationError::new(format!("{p}.ssh_host_principals[{i}]"), m))?;
    }
    for (i, rule) in c.rules.iter().enumerate() {
        let rp = format!("{p}.rules[{i}]");
        if rule.resources.is_empty() {
            return Err(ValidationError::new(
                format!("{rp}.resources"),
                "must list at least one resource or \"*\"",
            ));
        }
        if rule.verbs.is_empty() {
            return Err(ValidationError::new(
                format!("{rp}.verbs"),
                "must list at least one verb or \"*\"",
            ));
        }
        for r in &rule.resources {
            if r != "*" && !RULE_RESOURCES.contains(&r.as_str()) {
                return Err(ValidationError::new(
                    format!("{rp}.resources"),
                    format!(
                        "unknown resource {r:?}; expected \"*\" or one of {}",
                        RULE_RESOURCES.join(", ")
                    ),
                ));
            }
        }
        for v in &rule.verbs {
            if v != "*" && !KNOWN_VERBS.contains(&v.as_str()) {
                return Err(ValidationError::new(
                    format!("{rp}.verbs"),
                    format!(
                        "unknown verb {v:?}; expected \"*\" or one of {}",
                        KNOWN_VERBS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Kind for RoleSpec {
    const KIND: &'static str = "role";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        validate_conditions("allow", &res.spec.allow)?;
        validate_conditions("deny", &res.spec.deny)?;
        if res.spec.options.max_ttl.is_some_and(|t| t.0.is_zero()) {
            return Err(ValidationError::new(
                "spec.options.max_ttl",
                "must be greater than zero",
            ));
        }
        if let Some(t) = res.spec.options.max_ttl {
            crate::duration::check_duration(t.0)
                .map_err(|e| ValidationError::new("spec.options.max_ttl", e.to_string()))?;
        }
        for (i, c) in res.spec.options.ssh_source_address.iter().enumerate() {
            Cidr::parse(c).map_err(|m| {
                ValidationError::new(format!("spec.options.ssh_source_address[{i}]"), m)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Role;

    #[test]
    fn label_values_accept_string_or_list() {
        let yaml = "node_labels:\n  env: prod\n  team: [a, b]\n";
        let c: RoleConditions = serde_norway::from_str(yaml).unwrap();
        assert_eq!(c.node_labels["env"], vec!["prod"]);
        assert_eq!(c.node_labels["team"], vec!["a", "b"]);
        let c: RoleConditions = serde_json::from_str(r#"{"app_labels":{"x":"y"}}"#).unwrap();
        assert_eq!(c.app_labels["x"], vec!["y"]);
        assert!(serde_json::from_str::<RoleConditions>(r#"{"app_labels":{"x":1}}"#).is_err());
    }

    #[test]
    fn empty_conditions_serialize_compactly() {
        let spec = RoleSpec::default();
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"allow":{},"deny":{},"options":{}}"#
        );
    }

    fn role(spec: RoleSpec) -> Role {
        Role::new(crate::resource::Metadata::named("r"), spec)
    }

    #[test]
    fn every_stored_kind_is_in_the_rbac_vocabulary() {
        for kind in crate::resource::KNOWN_KINDS {
            assert!(RULE_RESOURCES.contains(kind), "{kind} missing");
        }
        for extra in ["audit", "status", "cert_authority"] {
            let mut spec = RoleSpec::default();
            spec.allow.rules = vec![AdminRule {
                resources: vec![extra.into()],
                verbs: vec!["read".into(), "list".into()],
            }];
            assert!(role(spec).validate().is_ok(), "{extra}");
        }
    }

    #[test]
    fn validation() {
        let mut spec = RoleSpec::default();
        spec.allow.logins = vec!["root".into(), "ubuntu".into()];
        spec.allow.rules = vec![AdminRule {
            resources: vec!["bot".into()],
            verbs: vec!["*".into()],
        }];
        assert!(role(spec.clone()).validate().is_ok());

        for bad in [
            "",
            "*",
            "a b",
            "a:b",
            "a,b",
            "-x",
            "ro\u{200B}ot",
            "ro\u{202E}ot",
            "root\u{1b}[2J",
            "ro\0ot",
            "rööt",
            "a/b",
            "a$b",
        ] {
            let mut s = spec.clone();
            s.deny.logins = vec![bad.into()];
            assert_eq!(
                role(s).validate().unwrap_err().field,
                "spec.deny.logins[0]",
                "{bad:?}"
            );
        }
        for ok in [
            "root",
            "ec2-user",
            "_svc",
            "alice@example.com",
            "host$",
            "a.b",
        ] {
            validate_login(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let mut s = spec.clone();
        s.allow
            .node_labels
            .insert("env\u{1b}".into(), vec!["x".into()]);
        assert_eq!(
            role(s).validate().unwrap_err().field,
            "spec.allow.node_labels"
        );
        let mut s = spec.clone();
        s.allow
            .app_labels
            .insert("*".into(), vec!["a\u{202E}".into()]);
        assert_eq!(
            role(s).validate().unwrap_err().field,
            "spec.allow.app_labels.*[0]"
        );
        let mut s = spec.clone();
        s.allow.rules[0].verbs = vec!["destroy".into()];
        let err = role(s).validate().unwrap_err();
        assert_eq!(err.field, "spec.allow.rules[0].verbs");
        assert!(err.message.contains("destroy"));
        let mut s = spec.clone();
        s.allow.rules[0].resources = vec!["bots".into()];
        assert_eq!(
            role(s).validate().unwrap_err().field,
            "spec.allow.rules[0].resources"
        );
        let mut s = spec;
        s.options.max_ttl = Some(HumanDuration(std::time::Duration::ZERO));
        assert_eq!(
            role(s).validate().unwrap_err().field,
            "spec.options.max_ttl"
        );
    }

    #[test]
    fn ssh_fields_parse_and_validate() {
        let yaml = "allow:\n  ssh_host_principals: ['*.example.test', localhost, 127.0.0.1, '::1']\n\
                    options:\n  ssh_port_forwarding: true\n  ssh_pty: false\n  \
                    ssh_source_address: [10.0.0.0/8, 192.0.2.7/32, '2001:db8::/32']\n";
        let spec: RoleSpec = serde_norway::from_str(yaml).unwrap();
        assert_eq!(spec.allow.ssh_host_principals.len(), 4);
        assert_eq!(spec.options.ssh_port_forwarding, Some(true));
        assert_eq!(spec.options.ssh_pty, Some(false));
        assert_eq!(spec.options.ssh_agent_forwarding, None);
        role(spec.clone()).validate().unwrap();

        let mut s = spec.clone();
        s.allow.ssh_host_principals[2] = "web_1\u{1b}".into();
        let err = role(s).validate().unwrap_err();
        assert_eq!(err.field, "spec.allow.ssh_host_principals[2]");
        assert!(err.message.contains("web_1\\u{1b}"), "{}", err.message);
        assert!(err.message.contains("host name"), "{}", err.message);
        let mut s = spec.clone();
        s.deny.ssh_host_principals = vec!["a..b".into()];
        assert_eq!(
            role(s).validate().unwrap_err().field,
            "spec.deny.ssh_host_principals[0]"
        );
        let mut s = spec;
        s.options.ssh_source_address.push("10.0.0.0/33".into());
        let err = role(s).validate().unwrap_err();
        assert_eq!(err.field, "spec.options.ssh_source_address[3]");
        assert!(err.message.contains("10.0.0.0/33"), "{}", err.message);
        assert!(serde_json::from_str::<RoleOptions>(r#"{"ssh_pty":"yes"}"#).is_err());
    }
}
