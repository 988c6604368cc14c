//! Token sections of the methods that verify a signed OIDC ID token:
//! `github`, `gitlab`, `oidc` (any issuer) and `kubernetes` (projected
//! service-account tokens). Each turns verified claims into join attributes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rules::{AllowRule, JoinAttributes, valid_claim_name, validate_rules};
use crate::resource::ValidationError;

/// GitHub's public OIDC issuer for Actions.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// GitLab.com's issuer.
pub const GITLAB_ISSUER: &str = "https://gitlab.com";

/// Claims of a GitHub Actions ID token that rules may test.
pub const GITHUB_RULE_FIELDS: [&str; 8] = [
    "repository",
    "repository_owner",
    "ref",
    "ref_type",
    "workflow",
    "environment",
    "actor",
    "sub",
];
/// Claims recorded as attributes beyond the rule fields.
const GITHUB_EXTRA: [&str; 8] = [
    "repository_id",
    "repository_owner_id",
    "repository_visibility",
    "run_id",
    "run_attempt",
    "sha",
    "job_workflow_ref",
    "event_name",
];
/// Claims of a GitLab CI ID token that rules may test.
pub const GITLAB_RULE_FIELDS: [&str; 9] = [
    "project_path",
    "namespace_path",
    "ref",
    "ref_type",
    "ref_protected",
    "environment",
    "pipeline_source",
    "user_login",
    "sub",
];
const GITLAB_EXTRA: [&str; 5] = ["project_id", "namespace_id", "pipeline_id", "job_id", "sha"];
/// Fields a Kubernetes rule may test.
pub const KUBERNETES_RULE_FIELDS: [&str; 2] = ["service_account", "sub"];

/// Most claims a generic `oidc` token contributes as attributes.
const MAX_OIDC_ATTRIBUTES: usize = 32;
/// Longest attribute value kept; longer claims are left out.
const MAX_VALUE_LEN: usize = 256;
/// Claims that describe the token, not the workload.
const TOKEN_CLAIMS: [&str; 6] = ["exp", "iat", "nbf", "jti", "aud", "azp"];

/// `github`: a GitHub Actions run's ID token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct GithubJoin {
    /// OR'd entries over [`GITHUB_RULE_FIELDS`].
    pub allow: Vec<AllowRule>,
    /// GitHub Enterprise Server host (`ghe.example.com[:port]`): the issuer
    /// becomes `https://HOST/_services/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise_server_host: Option<String>,
    /// GitHub Enterprise Cloud with a customised issuer: the issuer becomes
    /// `https://token.actions.githubusercontent.com/SLUG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise_slug: Option<String>,
}

impl GithubJoin {
    /// The issuer whose tokens this section accepts.
    pub fn issuer(&self) -> String {
        match (&self.enterprise_server_host, &self.enterprise_slug) {
            (Some(host), _) => format!("https://{host}/_services/token"),
            (None, Some(slug)) => format!("{GITHUB_ISSUER}/{slug}"),
            (None, None) => GITHUB_ISSUER.to_string(),
        }
    }

    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if self.enterprise_server_host.is_some() && self.enterprise_slug.is_some() {
            return Err(ValidationError::new(
                path,
                "give enterprise_server_host or enterprise_slug, not both",
            ));
        }
        if let Some(h) = &self.enterprise_server_host {
            validate_host(&format!("{path}.enterprise_server_host"), h)?;
        }
        if let Some(s) = &self.enterprise_slug
            && (s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(ValidationError::new(
                format!("{path}.enterprise_slug"),
                "an enterprise slug is letters, digits, '-' and '_'",
            ));
        }
        validate_rules(
            &format!("{path}.allow"),
            &self.allow,
            Some(&GITHUB_RULE_FIELDS),
            &["repository", "repository_owner", "sub"],
        )
    }
}

/// `gitlab`: a GitLab CI job's ID token (`id_tokens:` in `.gitlab-ci.yml`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct GitlabJoin {
    /// OR'd entries over [`GITLAB_RULE_FIELDS`].
    pub allow: Vec<AllowRule>,
    /// Self-hosted GitLab (`gitlab.example.com[:port]`); default gitlab.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl GitlabJoin {
    /// The issuer whose tokens this section accepts.
    pub fn issuer(&self) -> String {
        match &self.domain {
            Some(d) => format!("https://{d}"),
            None => GITLAB_ISSUER.to_string(),
        }
    }

    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if let Some(d) = &self.domain {
            validate_host(&format!("{path}.domain"), d)?;
        }
        validate_rules(
            &format!("{path}.allow"),
            &self.allow,
            Some(&GITLAB_RULE_FIELDS),
            &["project_path", "namespace_path", "sub"],
        )
    }
}

/// `oidc`: any OIDC issuer, rules over arbitrary claims.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct OidcJoin {
    /// `https://` issuer URL; keys come from its discovery document.
    pub issuer: String,
    /// Expected `aud`; default the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// OR'd entries over claim names (top-level string, number or boolean claims).
    pub allow: Vec<AllowRule>,
}

impl OidcJoin {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        validate_issuer(&format!("{path}.issuer"), &self.issuer)?;
        if self.audience.as_deref() == Some("") {
            return Err(ValidationError::new(
                format!("{path}.audience"),
                "must not be empty (leave it out to use the cluster name)",
            ));
        }
        validate_rules(&format!("{path}.allow"), &self.allow, None, &[])
    }
}

/// `kubernetes`: a projected service-account token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct KubernetesJoin {
    /// The cluster's JWKS (`kubectl get --raw /openid/v1/jwks`), pasted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_jwks: Option<String>,
    /// The cluster's service-account issuer. Without `static_jwks` its keys
    /// come from OIDC discovery; with it, `iss` must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Expected `aud` of the projected token; default the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// OR'd entries: `service_account: "namespace:name"` (globs), or `sub`.
    pub allow: Vec<AllowRule>,
}

impl KubernetesJoin {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        match (&self.static_jwks, &self.issuer) {
            (None, None) => {
                return Err(ValidationError::new(
                    path,
                    "give static_jwks (the cluster's JWKS) or issuer (for OIDC discovery)",
                ));
            }
            (Some(jwks), _) => {
                let ok = serde_json::from_str::<Value>(jwks)
                    .ok()
                    .and_then(|v| {
                        v.get("keys")
                            .and_then(Value::as_array)
                            .map(|k| !k.is_empty())
                    })
                    .unwrap_or(false);
                if !ok {
                    return Err(ValidationError::new(
                        format!("{path}.static_jwks"),
                        "must be a JWKS document: {\"keys\": [...]} with at least one key",
                    ));
                }
                if let Some(i) = &self.issuer
                    && i.is_empty()
                {
                    return Err(ValidationError::new(
                        format!("{path}.issuer"),
                        "must not be empty",
                    ));
                }
            }
            (None, Some(i)) => validate_issuer(&format!("{path}.issuer"), i)?,
        }
        if self.audience.as_deref() == Some("") {
            return Err(ValidationError::new(
                format!("{path}.audience"),
                "must not be empty (leave it out to use the cluster name)",
            ));
        }
        validate_rules(
            &format!("{path}.allow"),
            &self.allow,
            Some(&KUBERNETES_RULE_FIELDS),
            &KUBERNETES_RULE_FIELDS,
        )
    }
}

fn validate_host(path: &str, h: &str) -> Result<(), ValidationError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            path,
            "must be a host name with an optional port (no scheme, no path)",
        ))
    }
}

/// An issuer is an `https://` URL without query or fragment.
fn validate_issuer(path: &str, issuer: &str) -> Result<(), ValidationError> {
    let rest = issuer.strip_prefix("https://").ok_or_else(|| {
        ValidationError::new(path, "must be an https:// URL (the issuer's `iss` exactly)")
    })?;
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(ValidationError::new(
            path,
            "must be an https:// URL without query, fragment or spaces",
        ));
    }
    Ok(())
}

/// Text of a scalar claim; objects, arrays and null give `None`.
fn scalar(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (s.len() <= MAX_VALUE_LEN).then_some(s)
}

fn pick(claims: &Value, names: &[&str], out: &mut JoinAttributes) {
    for n in names {
        if let Some(v) = claims.get(*n).and_then(scalar) {
            out.insert((*n).to_string(), v);
        }
    }
}

/// Join attributes of a verified GitHub Actions token.
pub fn github_attributes(claims: &Value) -> JoinAttributes {
    let mut a = JoinAttributes::new();
    pick(claims, &GITHUB_RULE_FIELDS, &mut a);
    pick(claims, &GITHUB_EXTRA, &mut a);
    a
}

/// Join attributes of a verified GitLab CI token.
pub fn gitlab_attributes(claims: &Value) -> JoinAttributes {
    let mut a = JoinAttributes::new();
    pick(claims, &GITLAB_RULE_FIELDS, &mut a);
    pick(claims, &GITLAB_EXTRA, &mut a);
    a
}

/// Join attributes of a verified generic OIDC token: its top-level scalar
/// claims (at most 32, names that are valid attribute names, values up to
/// 256 characters), without the claims that only describe the token.
pub fn oidc_attributes(claims: &Value) -> JoinAttributes {
    oidc_attributes_with(claims, &[])
}

/// [`oidc_attributes`] plus the claims named in `wanted` (the fields the
/// token's rules test), whatever the cap: a rule on the 40th claim must see
/// it, not fail because the certificate keeps only 32.
pub fn oidc_attributes_with(claims: &Value, wanted: &[&str]) -> JoinAttributes {
    let mut a = JoinAttributes::new();
    let Some(obj) = claims.as_object() else {
        return a;
    };
    let usable = |k: &str| !TOKEN_CLAIMS.contains(&k) && valid_claim_name(k);
    for (k, v) in obj {
        if a.len() >= MAX_OIDC_ATTRIBUTES {
            break;
        }
        if let Some(s) = scalar(v).filter(|_| usable(k)) {
            a.insert(k.clone(), s);
        }
    }
    for k in wanted {
        if let Some(s) = obj.get(*k).and_then(scalar).filter(|_| usable(k)) {
            a.insert((*k).to_string(), s);
        }
    }
    a
}

/// Join attributes of a verified Kubernetes service-account token:
/// `sub`, `service_account` (`namespace:name`),
/// `service_account.namespace`, `service_account.name`,
/// `service_account.uid`, `pod.name`, `pod.uid`, `node.name`.
/// `None` when `sub` is not a service account's.
pub fn kubernetes_attributes(claims: &Value) -> Option<JoinAttributes> {
    let sub = claims.get("sub")?.as_str()?;
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    let mut a = JoinAttributes::new();
    a.insert("sub".into(), sub.to_string());
    a.insert("service_account".into(), format!("{ns}:{name}"));
    a.insert("service_account.namespace".into(), ns.to_string());
    a.insert("service_account.name".into(), name.to_string());
    let k8s = claims.get("kubernetes.io");
    let get = |path: &[&str]| {
        let mut v = k8s?;
        for p in path {
            v = v.get(*p)?;
        }
        scalar(v)
    };
    for (attr, path) in [
        ("service_account.uid", &["serviceaccount", "uid"][..]),
        ("pod.name", &["pod", "name"][..]),
        ("pod.uid", &["pod", "uid"][..]),
        ("node.name", &["node", "name"][..]),
    ] {
        if let Some(v) = get(path) {
            a.insert(attr.into(), v);
        }
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn github_issuers() {
        let mut g = GithubJoin::default();
        assert_eq!(g.issuer(), GITHUB_ISSUER);
        g.enterprise_slug = Some("acme".into());
        assert_eq!(
            g.issuer(),
            "https://token.actions.githubusercontent.com/acme"
        );
        g.enterprise_slug = None;
        g.enterprise_server_host = Some("ghe.acme.test:8443".into());
        assert_eq!(g.issuer(), "https://ghe.acme.test:8443/_services/token");
        g.enterprise_server_host = Some("https://x/y".into());
        assert!(g.validate("spec.github").is_err());
    }

    #[test]
    fn attributes_from_claims() {
        let a = github_attributes(&json!({
            "repository": "acme/infra", "ref": "refs/heads/main", "run_id": "42",
            "environment": "prod", "aud": "x", "exp": 5, "nested": {"a": 1}
        }));
        assert_eq!(a["repository"], "acme/infra");
        assert_eq!(a["run_id"], "42");
        assert!(!a.contains_key("aud") && !a.contains_key("nested"));
        let g = gitlab_attributes(&json!({"project_path": "g/p", "ref_protected": "true"}));
        assert_eq!(g["ref_protected"], "true");
        let o = oidc_attributes(&json!({"sub": "x", "exp": 1, "team": "a", "n": 3, "arr": [1]}));
        assert_eq!(o.len(), 3, "{o:?}");
        // Past the cap, the claims a rule names are still there.
        let mut many = serde_json::Map::new();
        for i in 0..40 {
            many.insert(format!("c{i:02}"), json!("v"));
        }
        many.insert("zz_team".into(), json!("infra"));
        let many = Value::Object(many);
        assert_eq!(oidc_attributes(&many).len(), MAX_OIDC_ATTRIBUTES);
        let with = oidc_attributes_with(&many, &["zz_team", "exp"]);
        assert_eq!(with.get("zz_team").map(String::as_str), Some("infra"));
        assert!(!with.contains_key("exp"));
        let k = kubernetes_attributes(&json!({
            "sub": "system:serviceaccount:ci:deployer",
            "kubernetes.io": {"namespace": "ci", "pod": {"name": "p-1", "uid": "u"},
                              "serviceaccount": {"name": "deployer", "uid": "sa-u"}}
        }))
        .unwrap();
        assert_eq!(k["service_account"], "ci:deployer");
        assert_eq!(k["service_account.namespace"], "ci");
        assert_eq!(k["pod.name"], "p-1");
        assert!(kubernetes_attributes(&json!({"sub": "alice"})).is_none());
        assert!(kubernetes_attributes(&json!({"sub": "system:serviceaccount:ns"})).is_none());
    }

    #[test]
    fn kubernetes_needs_keys_or_issuer() {
        let mut k = KubernetesJoin {
            allow: vec![AllowRule(
                [("service_account".to_string(), "ci:*".to_string())].into(),
            )],
            ..Default::default()
        };
        assert!(k.validate("k").is_err());
        k.static_jwks = Some("{\"keys\": []}".into());
        assert!(k.validate("k").is_err());
        k.static_jwks = Some("{\"keys\": [{\"kty\":\"EC\"}]}".into());
        assert!(k.validate("k").is_ok());
        k.static_jwks = None;
        k.issuer = Some("http://insecure".into());
        assert!(k.validate("k").is_err());
        k.issuer = Some("https://kubernetes.default.svc".into());
        assert!(k.validate("k").is_ok());
    }
}
