//! A foreign trust domain's bundle (SPIFFE Federation): parsed from the SPIFFE
//! bundle document its bundle endpoint serves (a JWK Set, SPIFFE Trust Domain
//! and Bundle standard §4) or from PEM CA certificates an operator supplies
//! for the first fetch. Everything is checked: a bundle that does not parse,
//! holds no key, or names another trust domain is refused as a whole, so a
//! broken endpoint can never replace a good bundle.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

/// Why a foreign bundle was refused (names the member at fault; no secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(pub String);

type Result<T> = std::result::Result<T, BundleError>;

/// Most keys a foreign bundle may hold.
pub const MAX_BUNDLE_KEYS: usize = 64;
/// Sigil's own extension member of its bundle document: the trust domain the
/// bundle belongs to (ignored by other implementations, as RFC 7517 §5 asks).
pub const TRUST_DOMAIN_MEMBER: &str = "sigil_trust_domain";

/// A parsed foreign bundle.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ForeignBundle {
    /// DER CA certificates (`use: x509-svid`).
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT-SVID keys as JWKs (with `kid`; `use` removed, as in a plain JWKS).
    pub jwt_keys: Vec<Value>,
    /// `spiffe_sequence`, when given.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, when given.
    pub refresh_hint: Option<Duration>,
}

impl ForeignBundle {
    /// The JWT keys as a plain JWKS document (the Workload API's JWT bundle form).
    pub fn jwks_json(&self) -> String {
        json!({ "keys": self.jwt_keys }).to_string()
    }

    /// Whether the keys (not sequence or hint) equal `other`'s.
    pub fn same_keys(&self, other: &ForeignBundle) -> bool {
        self.x509_authorities == other.x509_authorities && self.jwt_keys == other.jwt_keys
    }
}

fn bad(msg: impl Into<String>) -> BundleError {
    BundleError(msg.into())
}

/// Parse an operator-supplied bootstrap bundle: PEM certificates, or a SPIFFE
/// bundle document.
pub fn parse_trust_bundle(text: &str, trust_domain: &str) -> Result<ForeignBundle> {
    let t = text.trim_start();
    if t.starts_with('{') {
        return parse_spiffe_bundle(t.as_bytes(), trust_domain);
    }
    let blocks = pem::parse_many(t).map_err(|e| bad(format!("not PEM or JSON: {e}")))?;
    let mut b = ForeignBundle::default();
    for block in blocks {
        if block.tag() != "CERTIFICATE" {
            return Err(bad(format!(
                "a {} block: only CERTIFICATE blocks belong in a trust bundle",
                block.tag()
            )));
        }
        check_authority(block.contents(), trust_domain)?;
        b.x509_authorities.push(block.contents().to_vec());
    }
    if b.x509_authorities.is_empty() {
        return Err(bad("no CA certificate in the PEM text"));
    }
    if b.x509_authorities.len() > MAX_BUNDLE_KEYS {
        return Err(bad(format!("more than {MAX_BUNDLE_KEYS} certificates")));
    }
    Ok(b)
}

/// Parse the SPIFFE bundle document of `trust_domain`. Keys with another
/// `use` are skipped (the standard says to ignore them); a bundle without any
/// usable key is refused.
pub fn parse_spiffe_bundle(body: &[u8], trust_domain: &str) -> Result<ForeignBundle> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a JSON document: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| bad("not a JSON object (a SPIFFE bundle is a JWK Set)"))?;
    if let Some(td) = obj.get(TRUST_DOMAIN_MEMBER)
        && td.as_str() != Some(trust_domain)
    {
        return Err(bad(format!(
            "the bundle is for trust domain {td}, not {trust_domain:?}"
        )));
    }
    let keys = obj
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"keys\" array (a SPIFFE bundle is a JWK Set)"))?;
    if keys.len() > MAX_BUNDLE_KEYS {
        return Err(bad(format!("more than {MAX_BUNDLE_KEYS} keys")));
    }
    let mut b = ForeignBundle {
        sequence: match obj.get("spiffe_sequence") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| bad("spiffe_sequence is not a non-negative integer"))?,
            ),
        },
        refresh_hint: match obj.get("spiffe_refresh_hint") {
            None => None,
            Some(v) => Some(Duration::from_secs(v.as_u64().ok_or_else(|| {
                bad("spiffe_refresh_hint is not a non-negative integer (seconds)")
            })?)),
        },
        ..Default::default()
    };
    for (i, key) in keys.iter().enumerate() {
        let jwk = key
            .as_object()
            .ok_or_else(|| bad(format!("keys[{i}] is not an object")))?;
        match jwk.get("use").and_then(Value::as_str) {
            Some("x509-svid") => {
                let x5c = jwk
                    .get("x5c")
                    .and_then(Value::as_array)
                    .filter(|a| a.len() == 1)
                    .and_then(|a| a[0].as_str())
                    .ok_or_else(|| {
                        bad(format!(
                            "keys[{i}]: an x509-svid key needs \"x5c\" with exactly one certificate"
                        ))
                    })?;
                let der = B64
                    .decode(x5c)
                    .map_err(|_| bad(format!("keys[{i}].x5c is not base64")))?;
                check_authority(&der, trust_domain).map_err(|e| bad(format!("keys[{i}]: {e}")))?;
                b.x509_authorities.push(der);
            }
            Some("jwt-svid") => b.jwt_keys.push(jwt_key(i, jwk)?),
            _ => continue,
        }
    }
    if b.x509_authorities.is_empty() && b.jwt_keys.is_empty() {
        return Err(bad(
            "the bundle holds no x509-svid or jwt-svid key (an empty bundle would distrust the domain)",
        ));
    }
    Ok(b)
}

/// A JWT-SVID key: `kid` and `kty` required; `use` dropped.
fn jwt_key(i: usize, jwk: &Map<String, Value>) -> Result<Value> {
    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default();
    if kid.is_empty() || kid.len() > 256 {
        return Err(bad(format!(
            "keys[{i}]: a jwt-svid key needs a \"kid\" (1-256 bytes)"
        )));
    }
    if !matches!(
        jwk.get("kty").and_then(Value::as_str),
        Some("EC" | "RSA" | "OKP")
    ) {
        return Err(bad(format!("keys[{i}]: \"kty\" must be EC, RSA or OKP")));
    }
    let mut out = jwk.clone();
    out.remove("use");
    Ok(Value::Object(out))
}

/// A CA certificate that parses, with nothing after it, and whose SPIFFE ID
/// URI SANs (SPIRE's CAs carry `spiffe://<td>`) name `trust_domain` only.
fn check_authority(der: &[u8], trust_domain: &str) -> Result<()> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("X.509 authority does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after an X.509 authority"));
    }
    if !cert.is_ca() {
        return Err(bad(
            "an X.509 authority must be a CA certificate (BasicConstraints CA:TRUE)",
        ));
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && let Some(rest) = uri.strip_prefix("spiffe://")
            {
                let td = rest.split('/').next().unwrap_or_default();
                if td != trust_domain {
                    return Err(bad(format!(
                        "an X.509 authority of trust domain {td:?}, not {trust_domain:?}"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(uri: Option<&str>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        if let Some(u) = uri {
            p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn doc(cert: &[u8]) -> Value {
        json!({
            "keys": [
                {"use": "x509-svid", "kty": "EC", "x5c": [B64.encode(cert)]},
                {"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "k1", "x": "a", "y": "b"},
                {"use": "something-else", "kty": "EC"},
            ],
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 60,
        })
    }

    #[test]
    fn parses_a_spiffe_bundle() {
        let cert = ca(Some("spiffe://b.test"));
        let b = parse_spiffe_bundle(doc(&cert).to_string().as_bytes(), "b.test").unwrap();
        assert_eq!(b.x509_authorities, vec![cert]);
        assert_eq!(b.jwt_keys.len(), 1);
        assert!(b.jwt_keys[0].get("use").is_none());
        assert_eq!(b.sequence, Some(7));
        assert_eq!(b.refresh_hint, Some(Duration::from_secs(60)));
        let jwks: Value = serde_json::from_str(&b.jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], "k1");
    }

    #[test]
    fn refuses_garbage_and_wrong_domains() {
        for garbage in [
            &b"<html>"[..],
            b"[]",
            b"{}",
            b"{\"keys\": []}",
            b"{\"keys\": [1]}",
        ] {
            assert!(parse_spiffe_bundle(garbage, "b.test").is_err());
        }
        let cert = ca(Some("spiffe://c.test"));
        let e = parse_spiffe_bundle(doc(&cert).to_string().as_bytes(), "b.test").unwrap_err();
        assert!(e.to_string().contains("c.test"), "{e}");
        let mut d = doc(&ca(None));
        d[TRUST_DOMAIN_MEMBER] = json!("c.test");
        let e = parse_spiffe_bundle(d.to_string().as_bytes(), "b.test").unwrap_err();
        assert!(e.to_string().contains("not \"b.test\""), "{e}");
        d[TRUST_DOMAIN_MEMBER] = json!("b.test");
        parse_spiffe_bundle(d.to_string().as_bytes(), "b.test").unwrap();
        // A leaf certificate is no authority.
        let leaf = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        assert!(parse_spiffe_bundle(doc(leaf.der()).to_string().as_bytes(), "b.test").is_err());
        // A jwt key without kid.
        let d = json!({"keys": [{"use": "jwt-svid", "kty": "EC"}]});
        assert!(parse_spiffe_bundle(d.to_string().as_bytes(), "b.test").is_err());
    }

    #[test]
    fn parses_pem_or_json_bootstrap() {
        let cert = ca(None);
        let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE", cert.clone()));
        let b = parse_trust_bundle(&pem_text, "b.test").unwrap();
        assert_eq!(b.x509_authorities, vec![cert.clone()]);
        let b = parse_trust_bundle(&doc(&cert).to_string(), "b.test").unwrap();
        assert_eq!(b.x509_authorities.len(), 1);
        assert!(parse_trust_bundle("hello", "b.test").is_err());
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
        assert!(parse_trust_bundle(&key, "b.test").is_err());
    }
}
