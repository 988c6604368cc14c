//! The SPIFFE trust bundle (SPIFFE Trust Domain and Bundle standard): a JWK Set served on
//! the bundle endpoint, holding X.509 authorities (`use` x509-svid) and JWT keys
//! (`use` jwt-svid). The Workload API's JWT bundle is instead a plain JWKS (`jwks_document`),
//! because many JWT libraries drop keys with a `use` they do not know.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::jwk::{ec_members, jwk_key_id, p256_point};
use crate::{PkiError, Result};

/// SPIFFE trust bundle (JWKS) for the bundle endpoint: one key per X.509 authority with
/// `"use":"x509-svid"` and `"x5c":[base64 DER]` (no `kid`, as the X509-SVID standard
/// requires), one per JWT key with `"use":"jwt-svid"` and `"kid"`; top-level
/// `"spiffe_sequence"` and `"spiffe_refresh_hint"` (whole seconds). Keys must be P-256.
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
        let mut jwk = ec_members(&p256_point(cert.public_key().raw)?);
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
