//! Tests of the ID-token verifier with real keys: tokens are minted with
//! aws-lc-rs / jsonwebtoken and checked against a hand-built JWKS.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const ISS: &str = "https://issuer.test";
const AUD: &str = "example.test";
const NOW: i64 = 1_800_000_000;

struct EcKey {
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn ec_key(kid: &str) -> EcKey {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .unwrap();
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65);
    EcKey {
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65]),
        }),
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "repo:acme/infra", "exp": NOW + 300,
           "iat": NOW - 10, "nbf": NOW - 10})
}

fn mint_ec(key: &EcKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(&key.pkcs8)).unwrap()
}

fn jwks(keys: &[&Value]) -> Value {
    json!({ "keys": keys })
}

fn refusal(token: &str, set: &Value) -> String {
    match verify_with_jwks(token, set, Some(ISS), AUD, NOW) {
        Ok(c) => panic!("accepted: {c}"),
        Err(r) => r.reason(),
    }
}

/// A token with the given header and payload and an arbitrary signature.
fn hand_built(header: &Value, payload: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(payload.to_string()),
        B64URL.encode(sig)
    )
}

#[test]
fn valid_es256_token_gives_claims() {
    let k = ec_key("k1");
    let other = ec_key("k2");
    let t = mint_ec(&k, Some("k1"), &claims());
    let c = verify_with_jwks(&t, &jwks(&[&other.jwk, &k.jwk]), Some(ISS), AUD, NOW).unwrap();
    assert_eq!(c["sub"], "repo:acme/infra");
    // aud as an array containing ours.
    let mut cl = claims();
    cl["aud"] = json!(["other", AUD]);
    let t = mint_ec(&k, Some("k1"), &cl);
    assert!(verify_with_jwks(&t, &jwks(&[&k.jwk]), Some(ISS), AUD, NOW).is_ok());
    // No issuer expected (pasted Kubernetes JWKS without issuer).
    assert!(verify_with_jwks(&t, &jwks(&[&k.jwk]), None, AUD, NOW).is_ok());
}

#[test]
fn claim_checks_refuse_with_specific_reasons() {
    let k = ec_key("k1");
    let set = jwks(&[&k.jwk]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        mint_ec(&k, Some("k1"), &c)
    };
    let r = refusal(&with(&|c| c["aud"] = json!("someone-else")), &set);
    assert!(r.contains("audience") && r.contains("someone-else"), "{r}");
    let r = refusal(&with(&|c| c["aud"] = json!(["a", "b"])), &set);
    assert!(r.contains("audience"), "{r}");
    let r = refusal(&with(&|c| c["exp"] = json!(NOW - 61)), &set);
    assert!(r.starts_with("expired at 2027-"), "{r}");
    // Within the 60 s leeway.
    assert!(
        verify_with_jwks(
            &with(&|c| c["exp"] = json!(NOW - 59)),
            &set,
            Some(ISS),
            AUD,
            NOW
        )
        .is_ok()
    );
    let r = refusal(&with(&|c| c["nbf"] = json!(NOW + 120)), &set);
    assert!(r.starts_with("not valid before"), "{r}");
    let r = refusal(&with(&|c| c["iat"] = json!(NOW + 120)), &set);
    assert!(r.starts_with("issued in the future"), "{r}");
    let r = refusal(&with(&|c| c["iss"] = json!("https://evil.test")), &set);
    assert!(r.contains("issuer \"https://evil.test\""), "{r}");
    let r = refusal(
        &with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
        &set,
    );
    assert_eq!(r, "token has no exp");
    let r = refusal(
        &with(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
        &set,
    );
    assert_eq!(r, "token has no aud");
    let r = refusal(
        &with(&|c| drop(c.as_object_mut().unwrap().remove("iss"))),
        &set,
    );
    assert_eq!(r, "token has no iss");
    let r = refusal(&with(&|c| c["exp"] = json!("tomorrow")), &set);
    assert_eq!(r, "exp is not a number");
}

#[test]
fn key_selection() {
    let k1 = ec_key("k1");
    let k2 = ec_key("k2");
    let t = mint_ec(&k1, Some("nope"), &claims());
    assert_eq!(
        verify_with_jwks(&t, &jwks(&[&k1.jwk]), Some(ISS), AUD, NOW),
        Err(Refusal::UnknownKid("nope".into()))
    );
    // Signed by k1 but naming k2: the signature does not verify.
    let t = mint_ec(&k1, Some("k2"), &claims());
    assert_eq!(
        refusal(&t, &jwks(&[&k1.jwk, &k2.jwk])),
        "signature does not verify"
    );
    // No kid: only with exactly one key.
    let t = mint_ec(&k1, None, &claims());
    assert!(verify_with_jwks(&t, &jwks(&[&k1.jwk]), Some(ISS), AUD, NOW).is_ok());
    let r = refusal(&t, &jwks(&[&k1.jwk, &k2.jwk]));
    assert!(r.contains("no kid"), "{r}");
    // A key whose alg/kty/use does not fit the header.
    let mut wrong = k1.jwk.clone();
    wrong["alg"] = json!("ES384");
    let t = mint_ec(&k1, Some("k1"), &claims());
    assert!(refusal(&t, &jwks(&[&wrong])).contains("does not fit"));
    let mut enc = k1.jwk.clone();
    enc["use"] = json!("enc");
    assert!(refusal(&t, &jwks(&[&enc])).contains("does not fit"));
    let mut rsa_kty = k1.jwk.clone();
    rsa_kty["kty"] = json!("RSA");
    assert!(refusal(&t, &jwks(&[&rsa_kty])).contains("does not fit"));
}

#[test]
fn alg_none_and_hmac_are_refused_first() {
    let k = ec_key("k1");
    let set = jwks(&[&k.jwk]);
    let payload = B64URL.encode(claims().to_string());
    let none = format!("eyJhbGciOiJub25lIn0.{payload}.");
    assert_eq!(refusal(&none, &set), "alg none refused");
    let none_kid = hand_built(&json!({"alg": "None", "kid": "k1"}), &claims(), b"");
    assert_eq!(refusal(&none_kid, &set), "alg none refused");
    // HS256 "signed" with the public key as the HMAC secret: the classic
    // algorithm-confusion forgery.
    let secret = serde_json::to_vec(&k.jwk).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
    assert!(refusal(&forged, &set).starts_with("alg HS256 refused"));
    let other = hand_built(&json!({"alg": "ES512", "kid": "k1"}), &claims(), b"x");
    assert!(refusal(&other, &set).contains("not accepted"));
    let crit = hand_built(
        &json!({"alg": "ES256", "kid": "k1", "crit": ["b64"]}),
        &claims(),
        b"x",
    );
    assert!(refusal(&crit, &set).contains("critical"));
}

#[test]
fn tampered_malformed_and_oversized_tokens() {
    let k = ec_key("k1");
    let set = jwks(&[&k.jwk]);
    let t = mint_ec(&k, Some("k1"), &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let mut evil = claims();
    evil["sub"] = json!("repo:evil/repo");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(evil.to_string()),
        parts[2]
    );
    assert_eq!(refusal(&tampered, &set), "signature does not verify");
    assert!(refusal("a.b", &set).contains("three"));
    assert!(refusal("!!.b.c", &set).contains("base64url"));
    let big = format!("{t}{}", "A".repeat(MAX_TOKEN_LEN));
    assert!(refusal(&big, &set).contains("longer than"));
    let r = id_token(big.as_bytes()).unwrap_err();
    assert!(r.reason.contains("more than") && !r.reason.contains(&t[..20]));
    assert!(id_token(b"\xff\xfe").is_err());
    assert!(id_token(b"  \n").is_err());
    assert_eq!(id_token(format!("{t}\n").as_bytes()).unwrap(), t);
    assert!(refusal(&t, &json!({"nokeys": []})).contains("no keys"));
}

#[test]
fn rsa_and_eddsa_tokens_verify() {
    let rng = SystemRandom::new();
    // RS256 and PS256, signed by hand with aws-lc-rs.
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let public = pair.public_key();
    let rsa_jwk = json!({
        "kty": "RSA", "kid": "r1",
        "n": B64URL.encode(public.modulus().big_endian_without_leading_zero()),
        "e": B64URL.encode(public.exponent().big_endian_without_leading_zero()),
    });
    for (alg, padding) in [
        (
            "RS256",
            &signature::RSA_PKCS1_SHA256 as &dyn signature::RsaEncoding,
        ),
        ("PS256", &signature::RSA_PSS_SHA256),
    ] {
        let head = B64URL.encode(json!({"alg": alg, "kid": "r1"}).to_string());
        let body = B64URL.encode(claims().to_string());
        let input = format!("{head}.{body}");
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(padding, &rng, input.as_bytes(), &mut sig)
            .unwrap();
        let t = format!("{input}.{}", B64URL.encode(&sig));
        let c = verify_with_jwks(&t, &jwks(&[&rsa_jwk]), Some(ISS), AUD, NOW);
        assert!(c.is_ok(), "{alg}: {c:?}");
    }
    // EdDSA via jsonwebtoken.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let ed_jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "e1",
                        "x": B64URL.encode(ed.public_key().as_ref())});
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("e1".into());
    let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();
    assert!(verify_with_jwks(&t, &jwks(&[&ed_jwk, &rsa_jwk]), Some(ISS), AUD, NOW).is_ok());
    // An EdDSA header naming the RSA key: refused before the signature.
    let t2 = hand_built(&json!({"alg": "EdDSA", "kid": "r1"}), &claims(), b"x");
    assert!(refusal(&t2, &jwks(&[&rsa_jwk])).contains("does not fit"));
}

#[test]
fn static_jwks_text_path() {
    let k = ec_key("k1");
    let mut c = claims();
    c["exp"] = json!(now_unix() + 300);
    c["iat"] = json!(now_unix());
    c["nbf"] = json!(now_unix());
    let t = mint_ec(&k, Some("k1"), &c);
    let text = jwks(&[&k.jwk]).to_string();
    assert!(verify_static(&t, &text, Some(ISS), AUD).is_ok());
    assert!(verify_static(&t, "not json", Some(ISS), AUD).is_err());
    let d = verify_static(&t, &text, Some(ISS), "other").unwrap_err();
    assert!(!d.unavailable && d.reason.contains("audience"));
}

#[tokio::test]
async fn unreachable_issuer_is_unavailable_and_bad_headers_are_denied() {
    // Issuer unreachable (nothing listens on port 1): a well-formed token is
    // "unavailable", a bad header is denied without a fetch being needed.
    let cache = JwksCache::default();
    let out = Outbound::new(None).unwrap();
    let issuer = "https://127.0.0.1:1";
    let k = ec_key("k1");
    let t = mint_ec(&k, Some("k1"), &claims());
    let d = cache.verify(&out, issuer, &t, AUD).await.unwrap_err();
    assert!(d.unavailable, "{}", d.reason);
    // A second attempt inside the refetch interval does not refetch.
    let d = cache.verify(&out, issuer, &t, AUD).await.unwrap_err();
    assert!(
        d.unavailable && d.reason.contains("last fetch failed"),
        "{}",
        d.reason
    );
    let payload = B64URL.encode(claims().to_string());
    let d = cache
        .verify(
            &out,
            issuer,
            &format!("eyJhbGciOiJub25lIn0.{payload}."),
            AUD,
        )
        .await
        .unwrap_err();
    assert!(!d.unavailable && d.reason == "alg none refused");
}
