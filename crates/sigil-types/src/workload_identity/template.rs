//! `{{ name }}` templates in a workload identity's SPIFFE ID and DNS SANs.
//!
//! A template is literal text with `{{ attribute.name }}` placeholders
//! (whitespace inside the braces is optional). Names use only
//! `[A-Za-z0-9_.-]`. A `{{` without a closing `}}` or an empty name is a
//! syntax error; a lone `}}` is literal text.

use super::Attributes;
use crate::spiffe::{SpiffeIdError, validate_path_segment};

/// Maximum length of a rendered DNS name.
const MAX_DNS_NAME_LEN: usize = 253;
/// Maximum length of one DNS label.
const MAX_DNS_LABEL_LEN: usize = 63;

/// Why a template could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template text is malformed: unterminated `{{`, empty attribute
    /// name, or a name with characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid template {template:?}: {reason}")]
    Syntax {
        /// The whole template.
        template: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The template uses an attribute the workload does not have. Nothing is
    /// issued (an empty value is never substituted).
    #[error(
        "attribute {0} is not set for this workload, so the identity cannot be issued (the template needs it; check how the agent attests the workload)"
    )]
    MissingAttribute(String),
    /// An attribute value cannot be substituted where the template uses it.
    #[error(
        "attribute {attribute} has value {value:?}, which cannot be used in the identity: {reason}"
    )]
    InvalidValue {
        /// The attribute name.
        attribute: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Every value was acceptable but the rendered result is not (too long,
    /// invalid trust domain, a label built from several parts...).
    #[error("rendered {field} {output:?} is invalid: {reason}")]
    InvalidResult {
        /// What was rendered: `spiffe.id` or `x509.dns_sans[N]`.
        field: String,
        /// The rendered text (or the trust domain when that is at fault).
        output: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// One part of a parsed template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Text copied as is.
    Literal(&'a str),
    /// `{{ name }}`: the attribute name, trimmed.
    Attribute(&'a str),
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn syntax(template: &str, reason: impl Into<String>) -> TemplateError {
    TemplateError::Syntax {
        template: template.to_string(),
        reason: reason.into(),
    }
}

/// Splits `template` into literals and attribute references.
pub(crate) fn parse(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Literal(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(syntax(
                template,
                "\"{{\" has no closing \"}}\" (write e.g. \"{{ workload.unix.uid }}\")",
            ));
        };
        let name = after[..close].trim();
        if name.is_empty() {
            return Err(syntax(
                template,
                "empty attribute name between \"{{\" and \"}}\"",
            ));
        }
        if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(syntax(
                template,
                format!(
                    "attribute name {name:?} contains {c:?}; names use only letters, digits, '_', '.' and '-'"
                ),
            ));
        }
        pieces.push(Piece::Attribute(name));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest));
    }
    Ok(pieces)
}

/// The attribute names a parsed template references, in order.
pub(crate) fn names<'a>(pieces: &[Piece<'a>]) -> impl Iterator<Item = &'a str> {
    pieces.iter().filter_map(|p| match p {
        Piece::Attribute(name) => Some(*name),
        Piece::Literal(_) => None,
    })
}

/// Renders with every attribute replaced by `x` (for validation).
pub(crate) fn render_sample(pieces: &[Piece<'_>]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Literal(s) => s,
            Piece::Attribute(_) => "x",
        })
        .collect()
}

/// Renders with values from `attrs`, checking each with `check` (which
/// returns a reason on rejection).
pub(crate) fn render(
    pieces: &[Piece<'_>],
    attrs: &Attributes,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<String, TemplateError> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(s) => out.push_str(s),
            Piece::Attribute(name) => {
                let Some(value) = attrs.get(*name) else {
                    return Err(TemplateError::MissingAttribute(name.to_string()));
                };
                check(value).map_err(|reason| TemplateError::InvalidValue {
                    attribute: name.to_string(),
                    value: value.clone(),
                    reason,
                })?;
                out.push_str(value);
            }
        }
    }
    Ok(out)
}

/// A value substituted into a SPIFFE ID path must be one whole valid segment.
pub(crate) fn check_path_value(value: &str) -> Result<(), String> {
    validate_path_segment(value).map_err(|e| match e {
        SpiffeIdError::EmptySegment(_) => {
            "an empty value would leave an empty path segment".to_string()
        }
        SpiffeIdError::DotSegment(_) => "'.' and '..' are not allowed as path segments".into(),
        SpiffeIdError::BadPathSegmentChar { found: '/', .. } => {
            "it contains '/', which would add path segments".into()
        }
        SpiffeIdError::BadPathSegmentChar { found, .. } => format!(
            "character {found:?} is not allowed in a SPIFFE ID path (only letters, digits, '.', '-', '_')"
        ),
        other => other.to_string(),
    })
}

/// A value substituted into a DNS name must be a DNS label: 1..=63 letters,
/// digits or hyphens.
pub(crate) fn check_dns_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("an empty value would leave an empty DNS label".into());
    }
    if value.len() > MAX_DNS_LABEL_LEN {
        return Err(format!(
            "longer than {MAX_DNS_LABEL_LEN} characters, the limit for a DNS label"
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "character {c:?} is not allowed in a DNS label (only letters, digits and '-')"
        ));
    }
    Ok(())
}

/// Checks a whole DNS name: labels of 1..=63 letters, digits and hyphens, not
/// starting or ending with a hyphen, at most 253 characters. A leading `*.`
/// is allowed (attribute values can never produce one, so it is literal).
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a DNS name must not be empty".into());
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(format!("longer than {MAX_DNS_NAME_LEN} characters"));
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or doubled '.')".into());
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(format!(
                "label {label:?} is longer than {MAX_DNS_LABEL_LEN} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "label {label:?} contains {c:?} (only letters, digits and '-'; '*' only as a leading \"*.\")"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} must not start or end with '-'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pieces() {
        let p = parse("/svc/{{ workload.unix.uid }}/x-{{bot.name}}").unwrap();
        assert_eq!(
            p,
            [
                Piece::Literal("/svc/"),
                Piece::Attribute("workload.unix.uid"),
                Piece::Literal("/x-"),
                Piece::Attribute("bot.name"),
            ]
        );
        assert_eq!(render_sample(&p), "/svc/x/x-x");
        assert_eq!(
            names(&p).collect::<Vec<_>>(),
            ["workload.unix.uid", "bot.name"]
        );
        assert_eq!(parse("a}}b").unwrap(), [Piece::Literal("a}}b")]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "/a/{{ x",
            "/a/{{}}",
            "/a/{{   }}",
            "/a/{{ a b }}",
            "/{{ a/b }}",
            "{{{a}}",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(err, TemplateError::Syntax { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn dns_checks() {
        for ok in [
            "a",
            "payments.internal",
            "*.svc.example",
            "x-1.Y2",
            &"a".repeat(63),
        ] {
            assert!(check_dns_name(ok).is_ok(), "{ok}");
        }
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(200));
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "a.*.b",
            "**.a",
            &"a".repeat(64),
            &long,
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
        assert!(check_dns_value("web-1").is_ok());
        for bad in ["", "a.b", "*", "a b", &"a".repeat(64)] {
            assert!(check_dns_value(bad).is_err(), "{bad}");
        }
    }
}
