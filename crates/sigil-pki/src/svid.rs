//! X.509-SVIDs (SPIFFE X509-SVID standard): SPIFFE ID validation and leaf issuance.
//!
//! An X.509-SVID is an ordinary leaf from [`X509Ca::issue_leaf`] whose SubjectAltName holds
//! exactly one URI (the SPIFFE ID) plus optional DNS names. sigil-pki does not depend on
//! sigil-types, so the SPIFFE ID grammar is checked here.

use std::time::Duration;

use crate::der;
use crate::keys::CaPurpose;
use crate::x509_ca::{IssuedCert, OID_KP_CLIENT_AUTH, OID_KP_SERVER_AUTH, X509Ca, check_dns_name};
use crate::{PkiError, Result};

/// Longest SPIFFE ID the standard allows, in bytes.
const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name the standard allows, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest CommonName we put in a subject (the X.520 upper bound).
const MAX_CN_LEN: usize = 64;
const SCHEME: &str = "spiffe://";
/// GeneralName tags: [2] dNSName, [6] uniformResourceIdentifier (IMPLICIT IA5String).
const GN_DNS: u8 = 0x82;
const GN_URI: u8 = 0x86;

/// A SPIFFE ID split into its trust domain and path (empty, or `/seg/seg...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpiffeIdParts<'a> {
    /// Trust domain name (lowercase).
    pub(crate) trust_domain: &'a str,
    /// Path including its leading `/`; empty for the trust domain's own ID.
    pub(crate) path: &'a str,
}

fn bad_id(value: &str, reason: &'static str) -> PkiError {
    PkiError::InvalidName {
        field: "SPIFFE ID",
        value: value.chars().take(256).collect(),
        reason,
    }
}

/// Parse a SPIFFE ID per the SPIFFE-ID standard: `spiffe://` scheme, a trust domain of
/// `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]` that are neither empty nor `.`/`..`,
/// no query, fragment, port or userinfo, at most 2048 bytes.
pub(crate) fn parse_spiffe_id(id: &str) -> Result<SpiffeIdParts<'_>> {
    if id.len() > MAX_SPIFFE_ID_LEN {
        return Err(bad_id(id, "must be at most 2048 bytes"));
    }
    let rest = id
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad_id(id, "must start with 'spiffe://' (lowercase scheme)"))?;
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if trust_domain.is_empty() {
        return Err(bad_id(id, "the trust domain is empty"));
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(bad_id(id, "the trust domain must be at most 255 bytes"));
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad_id(
            id,
            "the trust domain may only contain a-z 0-9 . - _ (no port, userinfo or uppercase)",
        ));
    }
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            if segment.is_empty() {
                return Err(bad_id(
                    id,
                    "path segments must not be empty (no '//' or trailing '/')",
                ));
            }
            if segment == "." || segment == ".." {
                return Err(bad_id(id, "path segments must not be '.' or '..'"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(bad_id(
                    id,
                    "path segments may only contain A-Z a-z 0-9 . - _ (no query or fragment)",
                ));
            }
        }
    }
    Ok(SpiffeIdParts { trust_domain, path })
}

/// Parse a SPIFFE ID that names a workload: valid, in `trust_domain`, with a non-root path.
pub(crate) fn parse_workload_id<'a>(id: &'a str, trust_domain: &str) -> Result<SpiffeIdParts<'a>> {
    let parts = parse_spiffe_id(id)?;
    if parts.trust_domain != trust_domain {
        return Err(bad_id(
            id,
            "its trust domain is not the one of this cluster",
        ));
    }
    if parts.path.is_empty() {
        return Err(bad_id(
            id,
            "a workload SPIFFE ID needs a path (spiffe://<trust domain>/<path>)",
        ));
    }
    Ok(parts)
}

/// Subject CN for an SVID: the last path segment, cut to 64 bytes (segments are ASCII).
fn common_name<'a>(parts: &SpiffeIdParts<'a>) -> &'a str {
    let last = parts.path.rsplit('/').next().unwrap_or_default();
    let cn = if last.is_empty() {
        parts.trust_domain
    } else {
        last
    };
    &cn[..cn.len().min(MAX_CN_LEN)]
}

impl X509Ca {
    /// Issues an X.509-SVID: exactly one URI SAN (the SPIFFE ID) plus optional DNS SANs,
    /// CA=false, KeyUsage critical digitalSignature, EKU serverAuth+clientAuth, SKID/AKID.
    /// Only a [`CaPurpose::Spiffe`] CA may issue; the SPIFFE ID's trust domain must equal
    /// the CA's cluster name. Subject is `O=<cluster>, CN=<last path segment>`.
    pub fn issue_x509_svid(
        &self,
        subject_spki_der: &[u8],
        spiffe_id: &str,
        dns_sans: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert> {
        self.issue_svid_leaf(subject_spki_der, spiffe_id, dns_sans, ttl, None)
    }

    /// [`X509Ca::issue_x509_svid`] with an optional extra extension (the holder).
    pub(crate) fn issue_svid_leaf(
        &self,
        subject_spki_der: &[u8],
        spiffe_id: &str,
        dns_sans: &[String],
        ttl: Duration,
        extra: Option<(&[u8], &[u8])>,
    ) -> Result<IssuedCert> {
        if self.purpose != CaPurpose::Spiffe {
            return Err(PkiError::WrongPurpose {
                purpose: self.purpose,
                expected: "a spiffe CA issues X.509-SVIDs",
            });
        }
        let parts = parse_workload_id(spiffe_id, &self.cluster)?;
        self.check_leaf_names(dns_sans, &[])?;
        let mut sans = Vec::with_capacity(spiffe_id.len() + 16);
        der::tlv(&mut sans, GN_URI, spiffe_id.as_bytes());
        for name in dns_sans {
            check_dns_name(name)?;
            der::tlv(&mut sans, GN_DNS, name.as_bytes());
        }
        self.issue_leaf(
            subject_spki_der,
            common_name(&parts),
            &sans,
            &[OID_KP_SERVER_AUTH, OID_KP_CLIENT_AUTH],
            extra,
            ttl,
        )
    }
}

/// Check a SPIFFE ID against the SPIFFE-ID standard (see [`parse_spiffe_id`]).
pub(crate) fn check_spiffe_id(id: &str) -> Result<()> {
    parse_spiffe_id(id).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_split_into_parts() {
        let p = parse_spiffe_id("spiffe://prod.example/ns/default/sa/web-1_x.y").unwrap();
        assert_eq!(p.trust_domain, "prod.example");
        assert_eq!(p.path, "/ns/default/sa/web-1_x.y");
        let root = parse_spiffe_id("spiffe://prod").unwrap();
        assert_eq!((root.trust_domain, root.path), ("prod", ""));
        assert!(parse_spiffe_id("spiffe://prod/A.B-C_d/...x").is_ok());
        let long = format!("spiffe://prod/{}", "a".repeat(MAX_SPIFFE_ID_LEN - 14));
        assert_eq!(long.len(), MAX_SPIFFE_ID_LEN);
        assert!(parse_spiffe_id(&long).is_ok());
        assert!(parse_spiffe_id(&format!("{long}a")).is_err());
    }

    #[test]
    fn invalid_ids_are_rejected() {
        for bad in [
            "",
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://prod/a",
            "https://prod/a",
            "spiffe:/prod/a",
            "spiffe://Prod/a",
            "spiffe://prod:8080/a",
            "spiffe://user@prod/a",
            "spiffe://prod/",
            "spiffe://prod/a/",
            "spiffe://prod//a",
            "spiffe://prod/./a",
            "spiffe://prod/a/..",
            "spiffe://prod/a?b=c",
            "spiffe://prod/a#frag",
            "spiffe://prod/a%20b",
            "spiffe://prod/a b",
            "spiffe://prod/\u{e9}",
        ] {
            assert!(parse_spiffe_id(bad).is_err(), "{bad}");
        }
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert!(parse_spiffe_id(&long_td).is_err());
    }

    #[test]
    fn workload_ids_need_path_and_matching_domain() {
        assert!(parse_workload_id("spiffe://prod/web", "prod").is_ok());
        assert!(parse_workload_id("spiffe://prod", "prod").is_err());
        assert!(parse_workload_id("spiffe://other/web", "prod").is_err());
    }

    #[test]
    fn common_name_is_last_segment_and_short() {
        let p = parse_spiffe_id("spiffe://prod/ns/web").unwrap();
        assert_eq!(common_name(&p), "web");
        let id = format!("spiffe://prod/{}", "x".repeat(100));
        let p = parse_spiffe_id(&id).unwrap();
        assert_eq!(common_name(&p).len(), MAX_CN_LEN);
        let p = parse_spiffe_id("spiffe://prod").unwrap();
        assert_eq!(common_name(&p), "prod");
    }
}
