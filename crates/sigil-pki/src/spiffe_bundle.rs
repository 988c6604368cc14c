//! The SPIFFE trust bundle (SPIFFE Trust Domain and Bundle standard): a JWK Set served on
//! the bundle endpoint, holding X.509 authorities (`use` x509-svid) and JWT keys
//! (`use` jwt-svid). The Workload API's JWT bundle is instead a plain JWKS (`jwks_document`),
//! because many JWT libraries drop keys with a `use` they do not know.
//!
//! An X.509 authority is usually the trust anchor of the `spiffe` CA
//! ([`crate::X509Ca::trust_anchor_der`]): Sigil's own P-256 CA, or an organisation's root,
//! which may be RSA or ECDSA on P-384/P-521. Its JWK members describe that certificate's
//! key, as RFC 7517 requires of a JWK whose `x5c` is present (go-jose refuses a mismatch).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value, json};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::jwk::{ec_members, jwk_key_id, p256_point};
use crate::x509_ca::rsa_modulus_bits;
use crate::{PkiError, Result};

/// SPIFFE trust bundle (JWKS) for the bundle endpoint: one key per X.509 authority with
/// `"use":"x509-svid"` and `"x5c":[base64 DER]` (no `kid`, as the X509-SVID standard
/// requires), one per JWT key with `"use":"jwt-svid"` and `"kid"`; top-level
/// `"spiffe_sequence"` and `"spiffe_refresh_hint"` (whole seconds). JWT keys must be
/// P-256; X.509 authorities may be ECDSA (P-256, P-384, P-521) or RSA.
pub fn spiffe_bundle_document(
    x509_authorities_der: &[Vec<u8>],
    jwt_spkis: &[Vec<u8>],
    sequence: u64,
    refresh_hint: Duration,
) -> Result<Value> {
    let mut keys = Vec::with_capacity(x509_authorities_der.len() + jwt_spkis.len());
    for cert_der in x509_authorities_der {
        let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| PkiError::InvalidCertificate(format!("X.509 authority: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::InvalidCertificate(
                "trailing bytes after an X.509 authority".into(),
            ));
        }
        if !cert.is_ca() {
            return Err(PkiError::InvalidCertificate(
                "an X.509 authority must be a CA certificate (BasicConstraints CA:TRUE)".into(),
            ));
        }
        let mut jwk = authority_members(cert.public_key())?;
        jwk.insert("use".into(), json!("x509-svid"));
        jwk.insert("x5c".into(), json!([B64.encode(cert_der)]));
        keys.push(Value::Object(jwk));
    }
    for spki in jwt_spkis {
        let mut jwk = ec_members(&p256_point(spki)?);
        jwk.insert("kid".into(), json!(jwk_key_id(spki)?));
        jwk.insert("use".into(), json!("jwt-svid"));
        keys.push(Value::Object(jwk));
    }
    Ok(json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint.as_secs(),
    }))
}

/// The JWK key members (`kty` and its parameters, RFC 7518 §6) of an X.509 authority.
fn authority_members(spki: &SubjectPublicKeyInfo<'_>) -> Result<Map<String, Value>> {
    let unsupported = || {
        PkiError::InvalidCertificate(
            "an X.509 authority's key must be ECDSA on P-256, P-384 or P-521, or RSA".into(),
        )
    };
    match spki.parsed().map_err(|_| unsupported())? {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(unsupported)?;
            let (crv, len) = match curve.as_bytes() {
                [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07] => {
                    return Ok(ec_members(&p256_point(spki.raw)?));
                }
                [0x2b, 0x81, 0x04, 0x00, 0x22] => ("P-384", 48),
                [0x2b, 0x81, 0x04, 0x00, 0x23] => ("P-521", 66),
                _ => return Err(unsupported()),
            };
            let raw = point.data();
            if raw.len() != 1 + 2 * len || raw[0] != 0x04 {
                return Err(unsupported());
            }
            let mut m = Map::new();
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!(crv));
            m.insert("x".into(), json!(B64URL.encode(&raw[1..1 + len])));
            m.insert("y".into(), json!(B64URL.encode(&raw[1 + len..])));
            Ok(m)
        }
        PublicKey::RSA(rsa) => {
            if rsa_modulus_bits(rsa.modulus) < 2048 {
                return Err(PkiError::InvalidCertificate(
                    "an X.509 authority's RSA key must have at least 2048 bits".into(),
                ));
            }
            // Unsigned big-endian without leading zero octets (RFC 7518 §6.3.1).
            let strip = |b: &[u8]| crate::der::strip_leading_zeros(b).to_vec();
            let mut m = Map::new();
            m.insert("kty".into(), json!("RSA"));
            m.insert("n".into(), json!(B64URL.encode(strip(rsa.modulus))));
            m.insert("e".into(), json!(B64URL.encode(strip(rsa.exponent))));
            Ok(m)
        }
        _ => Err(unsupported()),
    }
}
