//! JWT-SVID signing (SPIFFE JWT-SVID standard): JWS compact, ES256, `kid` = RFC 7638
//! thumbprint of the JWT CA key. Verification lives in `jwt_verify.rs`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::der::{self, TAG_INTEGER, TAG_SEQUENCE};
use crate::jwk::jwk_key_id;
use crate::keys::{CaPurpose, KeyAlgorithm};
use crate::svid::parse_workload_id;
use crate::x509_ca::X509Ca;
use crate::{PkiError, Result};

/// Claims [`JwtSvidClaims::extra`] may not set: the ones this module writes itself, plus
/// `nbf` (validity is `iat`..`exp`).
const RESERVED_CLAIMS: [&str; 6] = ["sub", "aud", "exp", "iat", "iss", "nbf"];

/// What goes into a JWT-SVID.
#[derive(Clone, Debug, Default)]
pub struct JwtSvidClaims {
    /// The workload's SPIFFE ID (`sub`); must be in the CA's trust domain, with a path.
    pub sub: String,
    /// Audiences (`aud`), at least one; a single audience is encoded as a string.
    pub aud: Vec<String>,
    /// Issuer (`iss`), omitted when `None`.
    pub iss: Option<String>,
    /// Lifetime; `exp` = `iat` + whole seconds of this.
    pub ttl: Duration,
    /// Further private claims; may not contain sub, aud, exp, iat, iss or nbf.
    pub extra: Map<String, Value>,
}

/// A signed JWT-SVID.
#[derive(Clone, Debug)]
pub struct SignedJwtSvid {
    /// JWS compact serialization.
    pub token: String,
    /// `exp` as a time.
    pub expires: OffsetDateTime,
    /// `iat` as a time.
    pub issued_at: OffsetDateTime,
    /// `kid` of the signing key (its RFC 7638 thumbprint).
    pub kid: String,
}

fn bad_claim(field: &'static str, value: &str, reason: &'static str) -> PkiError {
    PkiError::InvalidName {
        field,
        value: value.to_string(),
        reason,
    }
}

/// Turn an ASN.1 DER ECDSA signature `SEQUENCE { r INTEGER, s INTEGER }` into the fixed
/// `r || s` form (each left-padded to `half` bytes) that JWS ES256 uses (RFC 7518 3.4).
pub(crate) fn ecdsa_der_to_fixed(sig_der: &[u8], half: usize) -> Option<Vec<u8>> {
    let (tag, body, rest) = der::read_tlv(sig_der)?;
    if tag != TAG_SEQUENCE || !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(2 * half);
    let mut body = body;
    for _ in 0..2 {
        let (tag, int, rest) = der::read_tlv(body)?;
        if tag != TAG_INTEGER || int.is_empty() || int[0] & 0x80 != 0 {
            return None; // r and s are positive integers
        }
        let mag = der::strip_leading_zeros(int);
        if mag.is_empty() || mag.len() > half {
            return None;
        }
        out.resize(out.len() + half - mag.len(), 0);
        out.extend_from_slice(mag);
        body = rest;
    }
    body.is_empty().then_some(out)
}

impl X509Ca {
    /// The CA key's SubjectPublicKeyInfo (DER), for JWKS and bundle building.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.key.public_key_spki_der()
    }

    /// Signs a JWT-SVID: JWS compact with header `{"alg":"ES256","kid":..,"typ":"JWT"}` and
    /// claims `sub`, `aud` (a string for one audience, else an array), integer `exp` and
    /// `iat`, `iss` if set, plus `extra` (which may not override those). Only a
    /// [`CaPurpose::Jwt`] CA signs; the token may not outlive the CA certificate.
    pub fn sign_jwt_svid(&self, claims: &JwtSvidClaims) -> Result<SignedJwtSvid> {
        if self.purpose != CaPurpose::Jwt {
            return Err(PkiError::WrongPurpose {
                purpose: self.purpose,
                expected: "a jwt CA signs JWT-SVIDs",
            });
        }
        if self.key.algorithm() != KeyAlgorithm::EcdsaP256 {
            return Err(PkiError::WrongAlgorithm {
                purpose: self.purpose,
                actual: self.key.algorithm().as_str(),
                expected: KeyAlgorithm::EcdsaP256.as_str(),
            });
        }
        parse_workload_id(&claims.sub, &self.cluster)?;
        if claims.aud.is_empty() {
            return Err(bad_claim("audience", "", "a JWT-SVID needs at least one"));
        }
        if let Some(a) = claims.aud.iter().find(|a| a.is_empty()) {
            return Err(bad_claim("audience", a, "must not be empty"));
        }
        if let Some(iss) = claims.iss.as_deref().filter(|i| i.is_empty()) {
            return Err(bad_claim("issuer", iss, "must not be empty when set"));
        }
        if let Some(k) = RESERVED_CLAIMS
            .iter()
            .find(|k| claims.extra.contains_key(**k))
        {
            return Err(bad_claim(
                "extra claim",
                k,
                "registered claims are set by the signer and cannot be overridden",
            ));
        }
        let ttl = i64::try_from(claims.ttl.as_secs())
            .map_err(|_| PkiError::InvalidTtl("too large to represent"))?;
        if ttl <= 0 {
            return Err(PkiError::InvalidTtl("must be at least one second"));
        }
        let iat = OffsetDateTime::now_utc().unix_timestamp();
        let exp = iat
            .checked_add(ttl)
            .ok_or(PkiError::InvalidTtl("too large to represent"))?;
        let issued_at = OffsetDateTime::from_unix_timestamp(iat)
            .map_err(|_| PkiError::InvalidTtl("clock out of range"))?;
        let expires = OffsetDateTime::from_unix_timestamp(exp)
            .map_err(|_| PkiError::InvalidTtl("too large to represent"))?;
        if expires > self.not_after {
            return Err(PkiError::InvalidTtl(
                "the token would outlive its CA; use a shorter TTL or rotate the CA",
            ));
        }

        let spki = self.key.public_key_spki_der();
        let kid = jwk_key_id(&spki)?;
        let header = json!({ "alg": "ES256", "kid": kid, "typ": "JWT" });
        let mut body = claims.extra.clone();
        body.insert("sub".into(), json!(claims.sub));
        body.insert(
            "aud".into(),
            match claims.aud.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        );
        body.insert("exp".into(), json!(exp));
        body.insert("iat".into(), json!(iat));
        if let Some(iss) = &claims.iss {
            body.insert("iss".into(), json!(iss));
        }
        let encode = |v: &Value| {
            serde_json::to_vec(v)
                .map(|b| B64URL.encode(b))
                .map_err(|e| PkiError::InvalidJwt(format!("claims do not encode as JSON: {e}")))
        };
        let mut token = encode(&header)?;
        token.push('.');
        token.push_str(&encode(&Value::Object(body))?);
        let sig_der = self.key.sign(token.as_bytes())?;
        let sig = ecdsa_der_to_fixed(&sig_der, 32).ok_or(PkiError::Signing {
            algorithm: KeyAlgorithm::EcdsaP256.as_str(),
        })?;
        token.push('.');
        token.push_str(&B64URL.encode(sig));
        Ok(SignedJwtSvid {
            token,
            expires,
            issued_at,
            kid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED, EcdsaKeyPair, KeyPair as _,
        UnparsedPublicKey,
    };

    fn der_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        der::nested(&mut out, TAG_SEQUENCE, |q| {
            der::tlv(q, TAG_INTEGER, r);
            der::tlv(q, TAG_INTEGER, s);
        });
        out
    }

    #[test]
    fn der_to_fixed_pads_and_strips() {
        // r has the 0x00 sign byte (33 bytes), s is short (30 bytes) and gets left-padded.
        let mut r = vec![0u8];
        r.extend([0x80; 32]);
        let s = [0x11u8; 30];
        let fixed = ecdsa_der_to_fixed(&der_sig(&r, &s), 32).unwrap();
        assert_eq!(fixed.len(), 64);
        assert_eq!(&fixed[..32], &[0x80; 32]);
        assert_eq!(&fixed[32..34], &[0, 0]);
        assert_eq!(&fixed[34..], &s);
    }

    #[test]
    fn der_to_fixed_rejects_malformed() {
        let ok = [0x01u8; 32];
        assert!(ecdsa_der_to_fixed(&der_sig(&[0x01; 33], &ok), 32).is_none()); // too long
        assert!(ecdsa_der_to_fixed(&der_sig(&[0x80; 32], &ok), 32).is_none()); // negative
        assert!(ecdsa_der_to_fixed(&der_sig(&[], &ok), 32).is_none()); // empty
        assert!(ecdsa_der_to_fixed(&der_sig(&[0], &ok), 32).is_none()); // zero
        let mut trailing = der_sig(&ok, &ok);
        trailing.push(0);
        assert!(ecdsa_der_to_fixed(&trailing, 32).is_none());
        let mut one = Vec::new();
        der::nested(&mut one, TAG_SEQUENCE, |q| der::tlv(q, TAG_INTEGER, &ok));
        assert!(ecdsa_der_to_fixed(&one, 32).is_none()); // s missing
        let mut three = Vec::new();
        der::nested(&mut three, TAG_SEQUENCE, |q| {
            for _ in 0..3 {
                der::tlv(q, TAG_INTEGER, &ok);
            }
        });
        assert!(ecdsa_der_to_fixed(&three, 32).is_none());
        assert!(ecdsa_der_to_fixed(b"", 32).is_none());
    }

    #[test]
    fn converted_signatures_verify_as_fixed() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, kp.public_key().as_ref());
        // Enough rounds that short r/s (leading zero bytes) occur with high probability.
        for i in 0..300u32 {
            let msg = i.to_be_bytes();
            let sig = kp.sign(&rng, &msg).unwrap();
            let fixed = ecdsa_der_to_fixed(sig.as_ref(), 32).unwrap();
            pk.verify(&msg, &fixed).unwrap();
        }
    }
}
