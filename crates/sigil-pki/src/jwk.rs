//! Public JWKs (RFC 7517/7518) for P-256 keys, their RFC 7638 thumbprints, and plain JWKS
//! documents. The thumbprint is the `kid` every JWT-SVID and JWT bundle key carries.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value, json};
use x509_parser::prelude::FromDer;

use crate::{PkiError, Result};

/// OID id-ecPublicKey (1.2.840.10045.2.1), content bytes.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// OID prime256v1 / secp256r1 (1.2.840.10045.3.1.7), content bytes.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Affine coordinates of a P-256 public key.
pub(crate) struct P256Point {
    pub(crate) x: [u8; 32],
    pub(crate) y: [u8; 32],
}

/// Extract the point from a P-256 SubjectPublicKeyInfo (uncompressed form only).
pub(crate) fn p256_point(spki_der: &[u8]) -> Result<P256Point> {
    let bad = |m: &str| PkiError::InvalidPublicKey(m.to_string());
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| PkiError::InvalidPublicKey(format!("not a DER SubjectPublicKeyInfo: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after SubjectPublicKeyInfo"));
    }
    if spki.algorithm.algorithm.as_bytes() != OID_EC_PUBLIC_KEY {
        return Err(bad("a JWK here needs an EC P-256 key"));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .ok_or_else(|| bad("EC key without a named curve"))?;
    if curve.as_bytes() != OID_P256 {
        return Err(bad("EC key is not on P-256"));
    }
    let raw = spki.subject_public_key.data.as_ref();
    if raw.len() != 65 || raw[0] != 0x04 {
        return Err(bad("P-256 point must be 65 bytes, uncompressed"));
    }
    let mut point = P256Point {
        x: [0; 32],
        y: [0; 32],
    };
    point.x.copy_from_slice(&raw[1..33]);
    point.y.copy_from_slice(&raw[33..65]);
    Ok(point)
}

/// The required EC members `kty`, `crv`, `x`, `y` of a P-256 public JWK.
pub(crate) fn ec_members(point: &P256Point) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kty".into(), json!("EC"));
    m.insert("crv".into(), json!("P-256"));
    m.insert("x".into(), json!(B64URL.encode(point.x)));
    m.insert("y".into(), json!(B64URL.encode(point.y)));
    m
}

fn thumbprint(point: &P256Point) -> String {
    // RFC 7638 section 3.2: required members only, lexicographic order, no whitespace.
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        B64URL.encode(point.x),
        B64URL.encode(point.y)
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    B64URL.encode(digest.as_ref())
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url, no padding) of a P-256 SPKI; used as `kid`.
pub fn jwk_key_id(spki_der: &[u8]) -> Result<String> {
    Ok(thumbprint(&p256_point(spki_der)?))
}

/// Public JWK (`kty` EC, `crv` P-256, `x`, `y`, `kid`, `alg` ES256) — no `use` member, so
/// JWT libraries that drop keys with unknown uses accept it.
pub fn jwk_for_spki(spki_der: &[u8]) -> Result<Value> {
    let point = p256_point(spki_der)?;
    let mut m = ec_members(&point);
    m.insert("kid".into(), json!(thumbprint(&point)));
    m.insert("alg".into(), json!("ES256"));
    Ok(Value::Object(m))
}

/// A plain JWKS document `{"keys":[...]}` for the given P-256 SPKIs (see [`jwk_for_spki`]).
pub fn jwks_document(spkis: &[Vec<u8>]) -> Result<Value> {
    let keys = spkis
        .iter()
        .map(|s| jwk_for_spki(s))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({ "keys": keys }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_keys::TlsKeyPair;
    use aws_lc_rs::signature::KeyPair as _;

    #[test]
    fn jwk_members_and_thumbprint_match_jsonwebtoken() {
        let key = TlsKeyPair::generate().unwrap();
        let jwk = jwk_for_spki(&key.spki_der()).unwrap();
        let obj = jwk.as_object().unwrap();
        let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "x", "y"]);
        assert_eq!(obj["kty"], "EC");
        assert_eq!(obj["crv"], "P-256");
        assert_eq!(obj["alg"], "ES256");
        // x || y is the uncompressed point without its 0x04 prefix.
        let mut point = vec![4u8];
        point.extend(B64URL.decode(obj["x"].as_str().unwrap()).unwrap());
        point.extend(B64URL.decode(obj["y"].as_str().unwrap()).unwrap());
        assert_eq!(point, key.key_pair().public_key().as_ref());
        // An independent RFC 7638 implementation agrees on the thumbprint.
        let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let theirs = parsed
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap();
        assert_eq!(obj["kid"], theirs.as_str());
        assert_eq!(jwk_key_id(&key.spki_der()).unwrap(), theirs);
        assert_eq!(obj["kid"].as_str().unwrap().len(), 43);
    }

    #[test]
    fn jwks_document_lists_every_key() {
        let a = TlsKeyPair::generate().unwrap().spki_der();
        let b = TlsKeyPair::generate().unwrap().spki_der();
        let doc = jwks_document(&[a.clone(), b.clone()]).unwrap();
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1]["kid"], jwk_key_id(&b).unwrap().as_str());
        assert_eq!(doc.as_object().unwrap().len(), 1);
        assert_eq!(jwks_document(&[]).unwrap(), json!({"keys": []}));
    }

    #[test]
    fn non_p256_keys_are_refused() {
        let ed_spki = {
            use aws_lc_rs::encoding::AsDer;
            let kp = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
            kp.public_key().as_der().unwrap().as_ref().to_vec()
        };
        assert!(matches!(
            jwk_key_id(&ed_spki),
            Err(PkiError::InvalidPublicKey(_))
        ));
        assert!(jwk_for_spki(b"\x30\x00").is_err());
        let mut trailing = TlsKeyPair::generate().unwrap().spki_der();
        trailing.push(0);
        assert!(jwk_for_spki(&trailing).is_err());
    }
}
