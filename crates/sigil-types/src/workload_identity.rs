//! `workload_identity`: a SPIFFE identity template plus the rules deciding
//! which workloads may receive it. Pure policy: evaluation and rendering take
//! the workload's attested attributes as input.
//!
//! Bounds enforced by validation: SVID TTLs (`x509.ttl`, `jwt.ttl`) between
//! [`MIN_SVID_TTL`] (1 minute) and [`MAX_SVID_TTL`] (30 days); at most
//! [`MAX_RULES`] entries per rule side, [`MAX_CONDITIONS`] conditions per
//! entry, [`MAX_VALUES`] values per `in`/`not_in`, [`MAX_DNS_SANS`] DNS SANs
//! and [`MAX_EXTRA_CLAIMS`] extra JWT claims.

mod id_match;
mod rules;
mod selector;
pub(crate) mod template;

pub use rules::RuleDecision;
pub use selector::WorkloadIdentitySelector;
pub use template::TemplateError;

use crate::duration::{HumanDuration, format_duration};
use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use crate::spiffe::{MAX_SPIFFE_ID_LEN, SpiffeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use template::Piece;

/// Attributes describing a workload and its bot, keyed by full dotted name:
/// `workload.unix.uid`, `workload.systemd.unit`, `join.github.repository`,
/// `bot.name`, `bot.instance_id`...
pub type Attributes = BTreeMap<String, String>;

/// Prefixes every attribute name used in templates and conditions must have.
pub const ATTRIBUTE_PREFIXES: &[&str] = &["workload.", "join.", "bot."];
/// Shortest SVID TTL a workload identity may set.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(60);
/// Longest SVID TTL a workload identity may set.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Maximum number of entries in `rules.allow` and in `rules.deny`.
pub const MAX_RULES: usize = 64;
/// Maximum number of conditions in one rule entry.
pub const MAX_CONDITIONS: usize = 64;
/// Maximum number of values in an `in` or `not_in` condition.
pub const MAX_VALUES: usize = 64;
/// Maximum number of `x509.dns_sans`.
pub const MAX_DNS_SANS: usize = 32;
/// Maximum number of `jwt.extra_claims`.
pub const MAX_EXTRA_CLAIMS: usize = 32;
/// Registered JWT claims the server sets itself; `extra_claims` may not use them.
pub const REGISTERED_JWT_CLAIMS: &[&str] = &["sub", "aud", "exp", "iat", "nbf", "iss", "jti"];
/// Maximum length of an attribute name.
const MAX_ATTRIBUTE_NAME_LEN: usize = 128;
/// Maximum length of `spiffe.hint`.
const MAX_HINT_LEN: usize = 256;
/// Maximum length of one DNS SAN template.
const MAX_DNS_TEMPLATE_LEN: usize = 1024;

/// Body of a `workload_identity`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentitySpec {
    /// The identity to issue.
    pub spiffe: SpiffeTemplate,
    /// Which workloads may receive it; empty allows every workload.
    #[serde(default)]
    pub rules: WorkloadRules,
}

/// The SPIFFE identity, with `{{ attribute }}` templates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SpiffeTemplate {
    /// Path template starting with `/`, e.g. `/svc/payments/{{ workload.unix.uid }}`;
    /// the cluster's trust domain is prepended.
    pub id: String,
    /// Workload API hint (not templated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
    /// X.509-SVID options.
    #[serde(default)]
    pub x509: X509SvidOptions,
    /// JWT-SVID options.
    #[serde(default)]
    pub jwt: JwtSvidOptions,
    /// Foreign trust domains (`spiffe_federation` names) whose bundles are
    /// delivered with this SVID (the Workload API's `federated_bundles`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<String>,
}

/// X.509-SVID options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct X509SvidOptions {
    /// DNS subject alternative names; may be templated (values must be DNS labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_sans: Vec<String>,
    /// Certificate lifetime; the server default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
}

/// JWT-SVID options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct JwtSvidOptions {
    /// Token lifetime; the server default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// Extra claims added to every JWT-SVID (not templated; no registered claims).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_claims: BTreeMap<String, serde_json::Value>,
}

/// Allow and deny rules over workload attributes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRules {
    /// At least one must match, unless empty (then every workload is allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<RuleEntry>,
    /// Checked first: any match refuses the identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<RuleEntry>,
}

/// One rule: matches when all its conditions hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// The conditions; at least one.
    pub conditions: Vec<Condition>,
}

/// A test on one attribute. Exactly one operator must be set. A missing
/// attribute never satisfies a condition, whatever the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Full attribute name, e.g. `workload.unix.uid`.
    pub attribute: String,
    /// Value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<String>,
    /// Value differs from this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_eq: Option<String>,
    /// Value is one of these (exact strings).
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_: Option<Vec<String>>,
    /// Value is none of these (exact strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<String>>,
    /// Value matches this glob (`*`, `?`; see [`crate::glob_match`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
}

/// A workload identity rendered for one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedIdentity {
    /// The SPIFFE ID to issue.
    pub spiffe_id: SpiffeId,
    /// Workload API hint.
    pub hint: String,
    /// Rendered DNS SANs for the X.509-SVID.
    pub dns_sans: Vec<String>,
    /// X.509-SVID lifetime, if the identity sets one.
    pub x509_ttl: Option<Duration>,
    /// JWT-SVID lifetime, if the identity sets one.
    pub jwt_ttl: Option<Duration>,
    /// Extra JWT-SVID claims.
    pub extra_claims: BTreeMap<String, serde_json::Value>,
}

/// Checks an attribute name: `[A-Za-z0-9_.-]`, one of [`ATTRIBUTE_PREFIXES`],
/// no empty dotted part. Returns the reason on failure.
fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("attribute name must not be empty".into());
    }
    if name.len() > MAX_ATTRIBUTE_NAME_LEN {
        return Err(format!(
            "attribute name is longer than {MAX_ATTRIBUTE_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "attribute name {name:?} contains {c:?}; names use only letters, digits, '_', '.' and '-'"
        ));
    }
    if !ATTRIBUTE_PREFIXES.iter().any(|p| name.starts_with(p)) || name.split('.').any(str::is_empty)
    {
        return Err(format!(
            "attribute name {name:?} must start with one of {} followed by a name, e.g. \"workload.unix.uid\"",
            ATTRIBUTE_PREFIXES.join(", ")
        ));
    }
    Ok(())
}

/// Parses a template and checks the attribute names it uses.
fn checked_template<'a>(field: &str, text: &'a str) -> Result<Vec<Piece<'a>>, ValidationError> {
    let pieces = template::parse(text).map_err(|e| ValidationError::new(field, e.to_string()))?;
    for name in template::names(&pieces) {
        check_attribute_name(name).map_err(|m| ValidationError::new(field, m))?;
    }
    Ok(pieces)
}

fn check_ttl(field: &str, ttl: Option<HumanDuration>) -> Result<(), ValidationError> {
    match ttl {
        Some(t) if t.0 < MIN_SVID_TTL || t.0 > MAX_SVID_TTL => Err(ValidationError::new(
            field,
            format!(
                "{t} is out of range: an SVID TTL must be between {} and {}",
                format_duration(MIN_SVID_TTL),
                format_duration(MAX_SVID_TTL)
            ),
        )),
        _ => Ok(()),
    }
}

/// The SPIFFE ID path prefix of Sigil's own identities, never a workload's.
pub const RESERVED_PATH: &str = "/sigil/";

impl WorkloadIdentitySpec {
    fn validate_spiffe(&self) -> Result<(), ValidationError> {
        if self.spiffe.id == RESERVED_PATH.trim_end_matches('/')
            || self.spiffe.id.starts_with(RESERVED_PATH)
        {
            return Err(ValidationError::new(
                "spec.spiffe.id",
                format!("paths under {RESERVED_PATH} are reserved for Sigil's own identities"),
            ));
        }
        let s = &self.spiffe;
        let field = "spec.spiffe.id";
        if s.id.is_empty() {
            return Err(ValidationError::new(
                field,
                "must not be empty; e.g. \"/svc/payments/{{ workload.unix.uid }}\"",
            ));
        }
        if !s.id.starts_with('/') {
            return Err(ValidationError::new(
                field,
                format!(
                    "{:?} must start with '/': it is the path of the SPIFFE ID (the trust domain is added by the cluster)",
                    s.id
                ),
            ));
        }
        if s.id.len() > MAX_SPIFFE_ID_LEN {
            return Err(ValidationError::new(
                field,
                format!("longer than {MAX_SPIFFE_ID_LEN} bytes"),
            ));
        }
        let pieces = checked_template(field, &s.id)?;
        SpiffeId::new("x", &template::render_sample(&pieces)).map_err(|e| {
            ValidationError::new(
                field,
                format!(
                    "{:?} is not a valid SPIFFE ID path (checked with each {{{{ ... }}}} replaced by \"x\"): {e}",
                    s.id
                ),
            )
        })?;
        if s.hint.chars().count() > MAX_HINT_LEN {
            return Err(ValidationError::new(
                "spec.spiffe.hint",
                format!("longer than {MAX_HINT_LEN} characters"),
            ));
        }
        if s.hint.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "spec.spiffe.hint",
                "must not contain control characters",
            ));
        }
        if s.x509.dns_sans.len() > MAX_DNS_SANS {
            return Err(ValidationError::new(
                "spec.spiffe.x509.dns_sans",
                format!("at most {MAX_DNS_SANS} DNS SANs are allowed"),
            ));
        }
        for (i, san) in s.x509.dns_sans.iter().enumerate() {
            let field = format!("spec.spiffe.x509.dns_sans[{i}]");
            if san.len() > MAX_DNS_TEMPLATE_LEN {
                return Err(ValidationError::new(
                    field,
                    format!("longer than {MAX_DNS_TEMPLATE_LEN} characters"),
                ));
            }
            let pieces = checked_template(&field, san)?;
            template::check_dns_name(&template::render_sample(&pieces)).map_err(|m| {
                ValidationError::new(&field, format!("{san:?} is not a valid DNS name: {m}"))
            })?;
        }
        check_ttl("spec.spiffe.x509.ttl", s.x509.ttl)?;
        check_ttl("spec.spiffe.jwt.ttl", s.jwt.ttl)?;
        if s.jwt.extra_claims.len() > MAX_EXTRA_CLAIMS {
            return Err(ValidationError::new(
                "spec.spiffe.jwt.extra_claims",
                format!("at most {MAX_EXTRA_CLAIMS} extra claims are allowed"),
            ));
        }
        for name in s.jwt.extra_claims.keys() {
            let field = format!("spec.spiffe.jwt.extra_claims.{name}");
            if name.trim().is_empty() {
                return Err(ValidationError::new(
                    "spec.spiffe.jwt.extra_claims",
                    "claim names must not be empty",
                ));
            }
            if REGISTERED_JWT_CLAIMS.contains(&name.as_str()) {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{name:?} is a registered JWT claim set by the server; extra claims may not use {}",
                        REGISTERED_JWT_CLAIMS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_rules(&self) -> Result<(), ValidationError> {
        for (side, entries) in [("allow", &self.rules.allow), ("deny", &self.rules.deny)] {
            let p = format!("spec.rules.{side}");
            if entries.len() > MAX_RULES {
                return Err(ValidationError::new(
                    p,
                    format!("at most {MAX_RULES} rules are allowed"),
                ));
            }
            for (i, entry) in entries.iter().enumerate() {
                let ep = format!("{p}[{i}].conditions");
                if entry.conditions.is_empty() {
                    return Err(ValidationError::new(
                        ep,
                        "a rule needs at least one condition (to allow every workload, leave `allow` empty)",
                    ));
                }
                if entry.conditions.len() > MAX_CONDITIONS {
                    return Err(ValidationError::new(
                        ep,
                        format!("at most {MAX_CONDITIONS} conditions are allowed per rule"),
                    ));
                }
                for (j, c) in entry.conditions.iter().enumerate() {
                    validate_condition(&format!("{ep}[{j}]"), c)?;
                }
            }
        }
        Ok(())
    }

    /// Renders the SPIFFE ID, DNS SANs and options for `attrs` in `trust_domain`.
    ///
    /// Every attribute a template uses must be present; values substituted
    /// into `spiffe.id` must each be one valid SPIFFE path segment, and values
    /// substituted into DNS SANs must be DNS labels.
    pub fn render(
        &self,
        trust_domain: &str,
        attrs: &Attributes,
    ) -> Result<RenderedIdentity, TemplateError> {
        let s = &self.spiffe;
        let path = template::render(&template::parse(&s.id)?, attrs, template::check_path_value)?;
        let invalid = |field: &str, output: &str, reason: String| TemplateError::InvalidResult {
            field: field.to_string(),
            output: output.to_string(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid(
                "spiffe.id",
                &path,
                "the path is empty: a workload identity needs a path".into(),
            ));
        }
        let spiffe_id = SpiffeId::new(trust_domain, &path)
            .map_err(|e| invalid("spiffe.id", &path, e.to_string()))?;
        // `/sigil/…` names Sigil's own identities (the app proxy's JWTs say
        // `spiffe://DOMAIN/sigil/bot/NAME`): no workload may be issued one.
        if path == RESERVED_PATH.trim_end_matches('/') || path.starts_with(RESERVED_PATH) {
            return Err(invalid(
                "spiffe.id",
                &path,
                format!("paths under {RESERVED_PATH} are reserved for Sigil's own identities"),
            ));
        }
        let mut dns_sans = Vec::with_capacity(s.x509.dns_sans.len());
        for (i, san) in s.x509.dns_sans.iter().enumerate() {
            let name = template::render(&template::parse(san)?, attrs, template::check_dns_value)?;
            template::check_dns_name(&name)
                .map_err(|m| invalid(&format!("x509.dns_sans[{i}]"), &name, m))?;
            dns_sans.push(name);
        }
        Ok(RenderedIdentity {
            spiffe_id,
            hint: s.hint.clone(),
            dns_sans,
            x509_ttl: s.x509.ttl.map(|t| t.0),
            jwt_ttl: s.jwt.ttl.map(|t| t.0),
            extra_claims: s.jwt.extra_claims.clone(),
        })
    }

    /// Every attribute name referenced by templates or conditions (sorted).
    /// Templates that do not parse contribute nothing.
    pub fn referenced_attributes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let templates = std::iter::once(&self.spiffe.id).chain(&self.spiffe.x509.dns_sans);
        for text in templates {
            if let Ok(pieces) = template::parse(text) {
                out.extend(template::names(&pieces).map(str::to_string));
            }
        }
        let entries = self.rules.allow.iter().chain(&self.rules.deny);
        for c in entries.flat_map(|e| &e.conditions) {
            out.insert(c.attribute.clone());
        }
        out
    }
}

fn validate_condition(field: &str, c: &Condition) -> Result<(), ValidationError> {
    check_attribute_name(&c.attribute)
        .map_err(|m| ValidationError::new(format!("{field}.attribute"), m))?;
    let set = c.operators();
    if set.len() != 1 {
        let which = if set.is_empty() {
            "none is set".to_string()
        } else {
            format!("found {}", set.join(", "))
        };
        return Err(ValidationError::new(
            field,
            format!("a condition needs exactly one of eq, not_eq, in, not_in, glob; {which}"),
        ));
    }
    for (name, list) in [("in", &c.in_), ("not_in", &c.not_in)] {
        if let Some(list) = list {
            if list.is_empty() {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    "must list at least one value",
                ));
            }
            if list.len() > MAX_VALUES {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    format!("at most {MAX_VALUES} values are allowed"),
                ));
            }
        }
    }
    Ok(())
}

impl Condition {
    /// Names of the operators that are set (`eq`, `in`...).
    fn operators(&self) -> Vec<&'static str> {
        [
            ("eq", self.eq.is_some()),
            ("not_eq", self.not_eq.is_some()),
            ("in", self.in_.is_some()),
            ("not_in", self.not_in.is_some()),
            ("glob", self.glob.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }
}

impl Kind for WorkloadIdentitySpec {
    const KIND: &'static str = "workload_identity";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        res.spec.validate_spiffe()?;
        for (i, td) in res.spec.spiffe.federates_with.iter().enumerate() {
            crate::spiffe::validate_trust_domain(td).map_err(|e| {
                ValidationError::new(format!("spec.spiffe.federates_with[{i}]"), e.to_string())
            })?;
        }
        res.spec.validate_rules()
    }
}
