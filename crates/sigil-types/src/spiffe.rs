//! SPIFFE IDs, validated exactly per the SPIFFE-ID standard
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>` where the scheme is the
//! lowercase `spiffe`, the trust domain uses only `[a-z0-9.-_]` (no port, no
//! userinfo), and the path is empty or a sequence of `/segment` with each
//! segment non-empty, not `.` or `..`, over `[A-Za-z0-9.-_]`. Query and
//! fragment are forbidden, as is a trailing slash. The whole ID is at most
//! 2048 bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The scheme prefix every SPIFFE ID starts with.
const SCHEME_PREFIX: &str = "spiffe://";
/// Maximum length in bytes of a whole SPIFFE ID (URI).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Maximum length in bytes of a trust domain name.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a SPIFFE ID, trust domain or path segment is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The scheme was not the lowercase `spiffe://`.
    #[error("invalid SPIFFE ID {0:?}: scheme must be \"spiffe://\" (lowercase)")]
    WrongScheme(String),
    /// No trust domain after the scheme.
    #[error("invalid SPIFFE ID {0:?}: trust domain is missing")]
    MissingTrustDomain(String),
    /// The trust domain contains a character outside `[a-z0-9.-_]`.
    #[error(
        "invalid trust domain in {input:?}: character {found:?} not allowed (only lowercase letters, digits, '.', '-', '_'; no port, userinfo or uppercase)"
    )]
    BadTrustDomainChar {
        /// The offending input.
        input: String,
        /// The rejected character.
        found: char,
    },
    /// The trust domain is longer than 255 bytes.
    #[error("invalid trust domain: longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The path is non-empty and does not start with `/`.
    #[error("invalid SPIFFE ID path {0:?}: must be empty or start with '/'")]
    PathNotAbsolute(String),
    /// A path segment is empty (`//`).
    #[error("invalid SPIFFE ID {0:?}: path has an empty segment")]
    EmptySegment(String),
    /// A path segment is `.` or `..`.
    #[error("invalid SPIFFE ID {0:?}: path segments must not be '.' or '..'")]
    DotSegment(String),
    /// A path segment contains a character outside `[A-Za-z0-9.-_]`.
    #[error(
        "invalid SPIFFE ID {input:?}: path character {found:?} not allowed (only letters, digits, '.', '-', '_'; no query or fragment)"
    )]
    BadPathSegmentChar {
        /// The offending input.
        input: String,
        /// The rejected character.
        found: char,
    },
    /// The path ends with `/`.
    #[error("invalid SPIFFE ID {0:?}: path must not end with '/'")]
    TrailingSlash(String),
    /// The ID is longer than 2048 bytes.
    #[error("invalid SPIFFE ID: longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
}

/// A validated SPIFFE ID. `path` is either empty or starts with `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

fn is_td_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks a trust domain name (`example.org`): non-empty, at most 255 bytes,
/// only `[a-z0-9.-_]`.
pub fn validate_trust_domain(s: &str) -> Result<(), SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain(s.to_string()));
    }
    if s.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if let Some(found) = s.chars().find(|c| !is_td_char(*c)) {
        return Err(SpiffeIdError::BadTrustDomainChar {
            input: s.to_string(),
            found,
        });
    }
    Ok(())
}

/// Checks one path segment (without slashes): non-empty, not `.` or `..`,
/// only `[A-Za-z0-9.-_]`.
pub fn validate_path_segment(s: &str) -> Result<(), SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::EmptySegment(s.to_string()));
    }
    if s == "." || s == ".." {
        return Err(SpiffeIdError::DotSegment(s.to_string()));
    }
    if let Some(found) = s.chars().find(|c| !is_path_char(*c)) {
        return Err(SpiffeIdError::BadPathSegmentChar {
            input: s.to_string(),
            found,
        });
    }
    Ok(())
}

/// Checks a whole path (`""` or `/a/b`); errors name `full` (the ID or path).
fn validate_path(path: &str, full: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::PathNotAbsolute(path.to_string()));
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash(full.to_string()));
    }
    for segment in rest.split('/') {
        // Re-label errors with the full input so the user sees the whole ID.
        validate_path_segment(segment).map_err(|e| match e {
            SpiffeIdError::EmptySegment(_) => SpiffeIdError::EmptySegment(full.to_string()),
            SpiffeIdError::DotSegment(_) => SpiffeIdError::DotSegment(full.to_string()),
            SpiffeIdError::BadPathSegmentChar { found, .. } => SpiffeIdError::BadPathSegmentChar {
                input: full.to_string(),
                found,
            },
            other => other,
        })?;
    }
    Ok(())
}

impl SpiffeId {
    /// Parses `spiffe://trust-domain/path` strictly per the standard.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let Some(rest) = s.strip_prefix(SCHEME_PREFIX) else {
            return Err(SpiffeIdError::WrongScheme(s.to_string()));
        };
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain(s.to_string()));
        }
        validate_trust_domain(td).map_err(|e| match e {
            SpiffeIdError::BadTrustDomainChar { found, .. } => SpiffeIdError::BadTrustDomainChar {
                input: s.to_string(),
                found,
            },
            other => other,
        })?;
        validate_path(path, s)?;
        Ok(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    /// Builds an ID from a trust domain and a path (`""` or starting with `/`).
    pub fn new(trust_domain: &str, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        validate_path(path, path)?;
        if SCHEME_PREFIX.len() + trust_domain.len() + path.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            path: path.to_string(),
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`, e.g. `/ns/prod/sa/web`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path segments, e.g. `["ns", "prod"]` for `/ns/prod`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').skip(1)
    }

    /// True if this ID names a trust domain only (empty path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_valid_examples() {
        for s in [
            "spiffe://trust-domain-name/path",
            "spiffe://staging.example.com/payments/mysql",
            "spiffe://k8s-west.example.com/ns/staging/sa/default",
            "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
            "spiffe://acme.com/billing/payments",
            "spiffe://example.org",
            "spiffe://a_b.c-d/A.b-C_9/x",
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/prod").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod");
        assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "prod"]);
    }

    #[test]
    fn standard_invalid_examples() {
        use SpiffeIdError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("http://example.org/a", |e| matches!(e, E::WrongScheme(_))),
            ("SPIFFE://example.org/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe:/example.org/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe:///path", |e| matches!(e, E::MissingTrustDomain(_))),
            ("spiffe://", |e| matches!(e, E::MissingTrustDomain(_))),
            ("spiffe://Example.org/a", |e| {
                matches!(e, E::BadTrustDomainChar { found: 'E', .. })
            }),
            ("spiffe://example.org:8080/a", |e| {
                matches!(e, E::BadTrustDomainChar { found: ':', .. })
            }),
            ("spiffe://user@example.org/a", |e| {
                matches!(e, E::BadTrustDomainChar { found: '@', .. })
            }),
            ("spiffe://example.org?x=1", |e| {
                matches!(e, E::BadTrustDomainChar { found: '?', .. })
            }),
            ("spiffe://example.org/a?x=1", |e| {
                matches!(e, E::BadPathSegmentChar { found: '?', .. })
            }),
            ("spiffe://example.org/a#frag", |e| {
                matches!(e, E::BadPathSegmentChar { found: '#', .. })
            }),
            ("spiffe://example.org/a%20b", |e| {
                matches!(e, E::BadPathSegmentChar { found: '%', .. })
            }),
            ("spiffe://example.org/a//b", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://example.org/a/./b", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://example.org/a/../b", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://example.org/a/", |e| {
                matches!(e, E::TrailingSlash(_))
            }),
            ("spiffe://example.org/", |e| {
                matches!(e, E::TrailingSlash(_))
            }),
        ];
        for (s, check) in cases {
            let err = SpiffeId::parse(s).expect_err(s);
            assert!(check(&err), "{s}: unexpected {err:?}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
        let td = "a".repeat(256);
        assert_eq!(
            validate_trust_domain(&td),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
    }

    #[test]
    fn new_and_serde() {
        let id = SpiffeId::new("example.org", "/svc/web").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/svc/web");
        assert!(SpiffeId::new("example.org", "svc").is_err());
        assert!(SpiffeId::new("Example.org", "/svc").is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/svc/web\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://x/a/\"").is_err());
        assert!(validate_path_segment("..").is_err());
        assert!(validate_path_segment("ok-1.A_b").is_ok());
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(
            td in "[a-z0-9._-]{1,40}",
            segs in proptest::collection::vec("[A-Za-z0-9._-]{1,20}", 0..6),
        ) {
            prop_assume!(segs.iter().all(|s| s != "." && s != ".."));
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            let id = SpiffeId::new(&td, &path).unwrap();
            let parsed = SpiffeId::parse(&id.to_string()).unwrap();
            prop_assert_eq!(&parsed, &id);
            prop_assert_eq!(parsed.to_string(), format!("spiffe://{td}{path}"));
        }

        #[test]
        fn random_strings_never_panic(s in "\\PC*") {
            let _ = SpiffeId::parse(&s);
            let _ = SpiffeId::parse(&format!("spiffe://{s}"));
        }
    }
}
