//! Allow rules of delegated join methods: a list of entries, OR'd; inside an
//! entry every field is a glob that the verified attribute of the same name
//! must match. A missing attribute never matches (fail closed).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::glob_match;
use crate::resource::ValidationError;

/// Verified join attributes, by the method's own field names (`repository`,
/// `service_account.namespace`, `aws_arn`, ...).
pub type JoinAttributes = BTreeMap<String, String>;

/// One allow entry: field name → glob. YAML scalars (`true`, `123`) are
/// accepted and kept as their text.
#[derive(Serialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct AllowRule(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in raw {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "allow rule field {k:?} must be a string, number or boolean"
                    )));
                }
            };
            out.insert(k, s);
        }
        Ok(AllowRule(out))
    }
}

impl AllowRule {
    /// The first reason the entry does not match, or `None` if it does.
    fn failure(&self, attrs: &JoinAttributes) -> Option<String> {
        if self.0.is_empty() {
            return Some("it has no fields".into());
        }
        self.0
            .iter()
            .find_map(|(field, pattern)| match attrs.get(field) {
                None => Some(format!("{field} is missing")),
                Some(v) if glob_match(pattern, v) => None,
                Some(v) => Some(format!("{field} is {v:?}, wanted {pattern:?}")),
            })
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// The outcome of matching verified attributes against a token's rules.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JoinRuleDecision {
    /// Index of the first allow entry that matched.
    pub matched_rule: Option<usize>,
    /// A sentence per entry saying why it did not match (all of them when
    /// nothing matched), or which one did.
    pub explanation: Vec<String>,
}

impl JoinRuleDecision {
    /// True when an entry matched.
    pub fn is_allowed(&self) -> bool {
        self.matched_rule.is_some()
    }

    /// One line for audit events and denials.
    pub fn summary(&self) -> String {
        self.explanation.join("; ")
    }
}

/// The first matching entry of `allow`, with an explanation.
pub fn evaluate_rules(allow: &[AllowRule], attrs: &JoinAttributes) -> JoinRuleDecision {
    let mut explanation = Vec::new();
    for (i, rule) in allow.iter().enumerate() {
        match rule.failure(attrs) {
            None => {
                return JoinRuleDecision {
                    matched_rule: Some(i),
                    explanation: vec![format!("allow[{i}] {rule} matched")],
                };
            }
            Some(why) => explanation.push(format!("allow[{i}] did not match: {why}")),
        }
    }
    if allow.is_empty() {
        explanation.push("the token has no allow rules".into());
    }
    JoinRuleDecision {
        matched_rule: None,
        explanation,
    }
}

/// Checks `allow` for a method: at least one entry; every field one the
/// method knows (`fields`, or any claim name when `None`); every entry pins
/// at least one of `identifying` (any field when empty); no empty patterns.
pub fn validate_rules(
    path: &str,
    allow: &[AllowRule],
    fields: Option<&[&str]>,
    identifying: &[&str],
) -> Result<(), ValidationError> {
    if allow.is_empty() {
        return Err(ValidationError::new(
            path,
            "at least one allow entry is required (entries are OR'd; inside one every field must match)",
        ));
    }
    for (i, rule) in allow.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if rule.0.is_empty() {
            return Err(ValidationError::new(
                here,
                "an allow entry needs at least one field",
            ));
        }
        for (field, pattern) in &rule.0 {
            if let Some(known) = fields
                && !known.contains(&field.as_str())
            {
                return Err(ValidationError::new(
                    format!("{here}.{field}"),
                    format!("unknown field; known fields: {}", known.join(", ")),
                ));
            }
            if fields.is_none() && !valid_claim_name(field) {
                return Err(ValidationError::new(
                    format!("{here}.{field}"),
                    "a claim name is 1-64 characters of letters, digits, '_', '-', ':' or '.'",
                ));
            }
            if pattern.is_empty() {
                return Err(ValidationError::new(
                    format!("{here}.{field}"),
                    "an empty pattern matches nothing useful; remove the field or give a value",
                ));
            }
        }
        if !identifying.is_empty() {
            let pinned = identifying
                .iter()
                .any(|f| rule.0.get(*f).is_some_and(|p| !p.chars().all(|c| c == '*')));
            if !pinned {
                return Err(ValidationError::new(
                    here,
                    format!(
                        "each entry must pin at least one identifying field ({}) to a value that is not just '*'",
                        identifying.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Claim names usable as attribute names.
pub fn valid_claim_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pairs: &[(&str, &str)]) -> AllowRule {
        AllowRule(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn first_matching_entry_wins_and_missing_attributes_fail() {
        let allow = vec![
            rule(&[("repository", "acme/infra"), ("ref", "refs/heads/main")]),
            rule(&[("repository", "acme/*")]),
        ];
        let mut attrs = JoinAttributes::new();
        attrs.insert("repository".into(), "acme/web".into());
        let d = evaluate_rules(&allow, &attrs);
        assert_eq!(d.matched_rule, Some(1));
        attrs.insert("repository".into(), "evil/web".into());
        let d = evaluate_rules(&allow, &attrs);
        assert!(!d.is_allowed());
        assert!(d.summary().contains("ref is missing") || d.summary().contains("repository is"));
        assert_eq!(d.explanation.len(), 2);
        assert!(!evaluate_rules(&[], &attrs).is_allowed());
        assert!(!evaluate_rules(&[AllowRule::default()], &attrs).is_allowed());
    }

    #[test]
    fn scalars_deserialize_as_text() {
        let r: AllowRule =
            serde_json::from_str(r#"{"ref_protected": true, "aws_account": 123}"#).unwrap();
        assert_eq!(r.0["ref_protected"], "true");
        assert_eq!(r.0["aws_account"], "123");
        assert!(serde_json::from_str::<AllowRule>(r#"{"a": [1]}"#).is_err());
    }

    #[test]
    fn validation_requires_known_and_identifying_fields() {
        let known = ["repository", "ref", "sub"];
        let ident = ["repository", "sub"];
        assert!(
            validate_rules("a", &[rule(&[("repository", "x/y")])], Some(&known), &ident).is_ok()
        );
        let e = validate_rules("a", &[rule(&[("ref", "main")])], Some(&known), &ident).unwrap_err();
        assert!(e.message.contains("identifying"), "{e}");
        let e =
            validate_rules("a", &[rule(&[("repository", "*")])], Some(&known), &ident).unwrap_err();
        assert!(e.message.contains("identifying"), "{e}");
        let e = validate_rules("a", &[rule(&[("colour", "x")])], Some(&known), &ident).unwrap_err();
        assert_eq!(e.field, "a[0].colour");
        assert!(validate_rules("a", &[], Some(&known), &ident).is_err());
        assert!(validate_rules("a", &[rule(&[("any.claim", "x")])], None, &[]).is_ok());
        assert!(validate_rules("a", &[rule(&[("bad claim", "x")])], None, &[]).is_err());
    }
}
