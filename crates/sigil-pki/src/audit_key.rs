//! The audit checkpoint signature: the auth service signs checkpoint bodies with a key
//! the database does not hold (a [`CaSigningKey`] from any [`crate::KeyManager`], so an
//! HSM can hold it later); verifiers and agents check them against a pinned public key.
//!
//! Public keys are written `ed25519:<base64 of the 32-byte key>` (or
//! `p256:<base64 of the uncompressed point>` for a P-256 key), signatures as base64
//! (Ed25519: 64 bytes; P-256: ASN.1 DER ECDSA over SHA-256).

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::key_manager::CaSigningKey;
use crate::keys::KeyAlgorithm;
use crate::{PkiError, Result};

/// The pinnable text form of `key`'s public key.
pub fn audit_public_key(key: &dyn CaSigningKey) -> String {
    let prefix = match key.algorithm() {
        KeyAlgorithm::Ed25519 => "ed25519",
        KeyAlgorithm::EcdsaP256 => "p256",
    };
    format!("{prefix}:{}", B64.encode(key.public_key_raw()))
}

/// Signs a checkpoint body; returns the base64 signature.
pub fn sign_audit_checkpoint(key: &dyn CaSigningKey, body: &str) -> Result<String> {
    Ok(B64.encode(key.sign(body.as_bytes())?))
}

/// Checks `signature_b64` over `body` with `public_key` (as [`audit_public_key`] writes it).
pub fn verify_audit_signature(public_key: &str, body: &str, signature_b64: &str) -> Result<()> {
    let bad = |m: &str| PkiError::InvalidCheckpoint(m.to_string());
    let (alg, raw) = public_key
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("the audit public key must look like ed25519:BASE64"))?;
    let raw = B64
        .decode(raw)
        .map_err(|_| bad("the audit public key is not valid base64"))?;
    let sig = B64
        .decode(signature_b64.trim())
        .map_err(|_| bad("the signature is not valid base64"))?;
    let verified = match alg {
        "ed25519" => UnparsedPublicKey::new(&ED25519, &raw).verify(body.as_bytes(), &sig),
        "p256" => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &raw).verify(body.as_bytes(), &sig)
        }
        _ => {
            return Err(bad(
                "unknown audit key algorithm (expected ed25519 or p256)",
            ));
        }
    };
    verified.map_err(|_| bad("the signature does not verify with the pinned audit public key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyManager as _, SoftwareKeyManager};

    #[test]
    fn sign_and_verify_both_algorithms() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let km = SoftwareKeyManager;
            let ctx = crate::KeyContext {
                cluster: "prod",
                purpose: "audit",
            };
            let key = km
                .load(&ctx, &km.generate(&ctx, alg).expect("generate"))
                .expect("load");
            let public = audit_public_key(key.as_ref());
            let sig = sign_audit_checkpoint(key.as_ref(), "body\n").expect("sign");
            verify_audit_signature(&public, "body\n", &sig).expect("verifies");
            assert!(verify_audit_signature(&public, "body!\n", &sig).is_err());
            let other = km
                .load(&ctx, &km.generate(&ctx, alg).expect("generate"))
                .expect("load");
            assert!(
                verify_audit_signature(&audit_public_key(other.as_ref()), "body\n", &sig).is_err(),
                "another key's signature must not verify"
            );
        }
        assert!(verify_audit_signature("rsa:AAAA", "b", "AAAA").is_err());
        assert!(verify_audit_signature("garbage", "b", "AAAA").is_err());
    }
}
