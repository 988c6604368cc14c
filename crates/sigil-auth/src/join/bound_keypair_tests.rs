//! Unit tests of the bound_keypair join (split out to keep bound_keypair.rs short).
use super::*;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};

fn ed25519_line(kp: &Ed25519KeyPair) -> String {
    let pk = ssh_key::public::Ed25519PublicKey::try_from(kp.public_key().as_ref()).unwrap();
    ssh_key::PublicKey::new(KeyData::Ed25519(pk), "me@host")
        .to_openssh()
        .unwrap()
}

fn signed(prefix: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = prefix.to_vec();
    m.extend_from_slice(payload);
    m
}

#[test]
fn ed25519_signature_over_the_challenge_verifies_and_replay_fails() {
    let kp = Ed25519KeyPair::generate().unwrap();
    let key = BoundKey::parse(&ed25519_line(&kp)).unwrap();
    assert!(key.line.starts_with("ssh-ed25519 AAAA"));
    assert!(!key.line.contains("me@host"), "comment is dropped");
    let c1 = challenge_payload("t", "example.test", false, None).unwrap();
    let c2 = challenge_payload("t", "example.test", false, None).unwrap();
    assert_ne!(c1, c2, "every challenge has a fresh nonce");
    let sig = kp.sign(&signed(CHALLENGE_PREFIX, &c1));
    key.verify(&c1, sig.as_ref()).unwrap();
    // A recorded answer does not verify for another nonce.
    assert!(key.verify(&c2, sig.as_ref()).is_err());
    // Without the domain-separation prefix it does not verify either.
    let bare = kp.sign(&c1);
    assert!(key.verify(&c1, bare.as_ref()).is_err());
    // Another key's signature fails.
    let other = Ed25519KeyPair::generate().unwrap();
    let sig2 = other.sign(&signed(CHALLENGE_PREFIX, &c1));
    assert!(key.verify(&c1, sig2.as_ref()).is_err());
}

#[test]
fn ecdsa_p256_der_signature_verifies() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let point = ssh_key::sec1::EncodedPoint::<ssh_key::sec1::consts::U32>::from_bytes(
        kp.public_key().as_ref(),
    )
    .unwrap();
    let line = ssh_key::PublicKey::new(KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)), "")
        .to_openssh()
        .unwrap();
    let key = BoundKey::parse(&line).unwrap();
    let c = challenge_payload("t", "c", true, None).unwrap();
    let sig = kp.sign(&rng, &signed(CHALLENGE_PREFIX, &c)).unwrap();
    key.verify(&c, sig.as_ref()).unwrap();
    let c2 = challenge_payload("t", "c", true, None).unwrap();
    assert!(key.verify(&c2, sig.as_ref()).is_err());
}

#[test]
fn unsupported_and_malformed_keys_are_refused() {
    assert!(BoundKey::parse("ssh-ed25519 notbase64!").is_err());
    assert!(BoundKey::parse("").is_err());
    // A syntactically valid RSA key line is refused as a type.
    let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDC5q7U+a+kjYRpVwzSVwm7kNqUT7lvlNc0/sTGwfgFAxvWJNcBjitFis+pDTWpEFUYR0pk3iHqXBTgiq2MBWY4+t6HZVfV9XMAtzgtZ7XoMH7r2XpIqBExIBxBguvBV1l+Jn/mD9u9p055sxYvBdJdXy91EDBKtNIelFbpj6LZLQ==";
    assert!(BoundKey::parse(rsa).is_err());
}

#[test]
fn answers_must_match_the_challenge_kind() {
    let plain = br#"{"signature":"AAAA"}"#;
    assert!(parse_answer(plain, false).is_ok());
    assert!(parse_answer(plain, true).is_err());
    let rot = br#"{"signature":"AAAA","new_public_key":"ssh-ed25519 AAAA"}"#;
    assert!(parse_answer(rot, true).is_ok());
    assert!(parse_answer(rot, false).is_err());
    assert!(parse_answer(br#"{"signature":"!!"}"#, false).is_err());
    assert!(parse_answer(b"not json", false).is_err());
}

#[test]
fn a_retry_challenge_names_the_key_to_sign_with() {
    let plain: serde_json::Value =
        serde_json::from_slice(&challenge_payload("t", "c", false, None).unwrap()).unwrap();
    assert!(plain.get("key").is_none());
    let named: serde_json::Value = serde_json::from_slice(
        &challenge_payload("t", "c", false, Some("ssh-ed25519 AAAA")).unwrap(),
    )
    .unwrap();
    assert_eq!(named["key"], "ssh-ed25519 AAAA");
    assert!(named.get("rotate").is_none());
}
