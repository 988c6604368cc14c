//! JWT-SVID signing and verification, including forged and tampered tokens.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value, json};
use sigil_pki::*;

const SUB: &str = "spiffe://prod/ns/default/sa/web";
const AUD: &str = "spiffe://prod/reports";

fn jwt_ca() -> X509Ca {
    X509Ca::generate(&SoftwareKeyManager, CaPurpose::Jwt, "prod")
        .unwrap()
        .0
}

fn claims(aud: &[&str]) -> JwtSvidClaims {
    JwtSvidClaims {
        sub: SUB.into(),
        aud: aud.iter().map(|a| a.to_string()).collect(),
        iss: None,
        ttl: Duration::from_secs(300),
        extra: Map::new(),
    }
}

fn jwks_of(ca: &X509Ca) -> Value {
    jwks_document(&[ca.public_key_spki_der()]).unwrap()
}

fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&B64URL.decode(seg).unwrap()).unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A P-256 key outside any CA, to forge tokens with arbitrary headers and claims.
struct Forger {
    kp: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl Forger {
    fn new() -> Self {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let spki = kp.public_key().as_der().unwrap().as_ref().to_vec();
        Forger { kp, spki }
    }
    fn kid(&self) -> String {
        jwk_key_id(&self.spki).unwrap()
    }
    fn jwks(&self) -> Value {
        jwks_document(std::slice::from_ref(&self.spki)).unwrap()
    }
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = self
            .kp
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64URL.encode(sig.as_ref()))
    }
    fn header(&self) -> Value {
        json!({"alg": "ES256", "kid": self.kid(), "typ": "JWT"})
    }
    fn good_claims(&self) -> Value {
        json!({"sub": SUB, "aud": AUD, "exp": now() + 300, "iat": now()})
    }
}

fn rejected(token: &str, jwks: &Value) -> String {
    match verify_jwt_svid(token, jwks, "prod", AUD) {
        Err(PkiError::InvalidJwt(msg)) => msg,
        other => panic!("expected InvalidJwt, got {other:?}"),
    }
}

#[test]
fn sign_then_verify_round_trip() {
    let ca = jwt_ca();
    let mut c = claims(&[AUD]);
    c.iss = Some("https://auth.prod.example".into());
    c.extra.insert("jti".into(), json!("abc-123"));
    let signed = ca.sign_jwt_svid(&c).unwrap();
    assert_eq!(signed.kid, jwk_key_id(&ca.public_key_spki_der()).unwrap());
    assert_eq!(
        signed.expires - signed.issued_at,
        time::Duration::seconds(300)
    );

    let header = part(&signed.token, 0);
    assert_eq!(
        header,
        json!({"alg": "ES256", "kid": signed.kid, "typ": "JWT"})
    );
    assert_eq!(header.as_object().unwrap().len(), 3);
    let body = part(&signed.token, 1);
    assert_eq!(body["aud"], json!(AUD), "one audience is a plain string");
    assert!(body["exp"].is_i64() && body["iat"].is_i64());
    assert_eq!(body["exp"], signed.expires.unix_timestamp());
    assert_eq!(body["iss"], "https://auth.prod.example");

    let v = verify_jwt_svid(&signed.token, &jwks_of(&ca), "prod", AUD).unwrap();
    assert_eq!(v.spiffe_id, SUB);
    assert_eq!(v.expires, signed.expires);
    assert_eq!(v.claims["jti"], "abc-123");

    // The bundle-endpoint form (keys with "use":"jwt-svid") verifies too, and among
    // several keys the right one is picked by kid.
    let other = jwt_ca();
    let bundle = spiffe_bundle_document(
        &[],
        &[other.public_key_spki_der(), ca.public_key_spki_der()],
        1,
        Duration::from_secs(60),
    )
    .unwrap();
    verify_jwt_svid(&signed.token, &bundle, "prod", AUD).unwrap();

    // Several audiences: an array, and each one verifies.
    let multi = ca.sign_jwt_svid(&claims(&[AUD, "other"])).unwrap();
    assert_eq!(part(&multi.token, 1)["aud"], json!([AUD, "other"]));
    verify_jwt_svid(&multi.token, &jwks_of(&ca), "prod", "other").unwrap();
    assert!(part(&multi.token, 1).get("iss").is_none());
}

#[test]
fn signing_refuses_bad_requests() {
    let ca = jwt_ca();
    let (spiffe, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Spiffe, "prod").unwrap();
    assert!(matches!(
        spiffe.sign_jwt_svid(&claims(&[AUD])),
        Err(PkiError::WrongPurpose { .. })
    ));
    for k in ["exp", "sub", "aud", "iat", "iss", "nbf"] {
        let mut c = claims(&[AUD]);
        c.extra.insert(k.into(), json!(1));
        assert!(ca.sign_jwt_svid(&c).is_err(), "{k}");
    }
    let mut c = claims(&[AUD]);
    c.sub = "spiffe://other/web".into();
    assert!(ca.sign_jwt_svid(&c).is_err());
    c.sub = "spiffe://prod".into();
    assert!(ca.sign_jwt_svid(&c).is_err());
    assert!(ca.sign_jwt_svid(&claims(&[])).is_err());
    assert!(ca.sign_jwt_svid(&claims(&[""])).is_err());
    let mut c = claims(&[AUD]);
    c.ttl = Duration::from_millis(500);
    assert!(matches!(ca.sign_jwt_svid(&c), Err(PkiError::InvalidTtl(_))));
    c.ttl = Duration::from_secs(20 * 365 * 86400);
    assert!(matches!(ca.sign_jwt_svid(&c), Err(PkiError::InvalidTtl(_))));
}

#[test]
fn alg_none_and_hs256_with_the_public_key_are_rejected() {
    let ca = jwt_ca();
    let jwks = jwks_of(&ca);
    let signed = ca.sign_jwt_svid(&claims(&[AUD])).unwrap();
    let payload = signed.token.split('.').nth(1).unwrap();

    let none_header = B64URL.encode(json!({"alg": "none", "kid": signed.kid}).to_string());
    let msg = rejected(&format!("{none_header}.{payload}."), &jwks);
    assert!(msg.contains("none"), "{msg}");
    let none_upper = B64URL.encode(json!({"alg": "NONE", "kid": signed.kid}).to_string());
    rejected(&format!("{none_upper}.{payload}."), &jwks);

    // Classic key confusion: HMAC keyed with the public key (DER, PEM, JWK JSON).
    let spki = ca.public_key_spki_der();
    let pem_text = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone()));
    let header =
        B64URL.encode(json!({"alg": "HS256", "kid": signed.kid, "typ": "JWT"}).to_string());
    let input = format!("{header}.{payload}");
    for secret in [
        spki.clone(),
        pem_text.into_bytes(),
        jwks["keys"][0].to_string().into_bytes(),
    ] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        let msg = rejected(&format!("{input}.{}", B64URL.encode(tag.as_ref())), &jwks);
        assert!(msg.contains("HS256"), "{msg}");
    }
    for alg in ["ES384", "RS256", "PS256", "EdDSA", "HS512"] {
        let h = B64URL.encode(json!({"alg": alg, "kid": signed.kid}).to_string());
        let sig = signed.token.split('.').nth(2).unwrap();
        rejected(&format!("{h}.{payload}.{sig}"), &jwks);
    }
}

#[test]
fn kid_must_be_present_and_known() {
    let ca = jwt_ca();
    let other = jwt_ca();
    let signed = other.sign_jwt_svid(&claims(&[AUD])).unwrap();
    let msg = rejected(&signed.token, &jwks_of(&ca));
    assert!(msg.contains("not in the key set"), "{msg}");

    // Relabelled with the trusted kid, the signature no longer matches that key.
    let f = Forger::new();
    let mut header = f.header();
    header["kid"] = json!(jwk_key_id(&ca.public_key_spki_der()).unwrap());
    let msg = rejected(&f.sign(&header, &f.good_claims()), &jwks_of(&ca));
    assert!(msg.contains("signature"), "{msg}");

    let mut no_kid = f.header();
    no_kid.as_object_mut().unwrap().remove("kid");
    let msg = rejected(&f.sign(&no_kid, &f.good_claims()), &f.jwks());
    assert!(msg.contains("kid"), "{msg}");

    // A JWKS with the same kid twice is ambiguous.
    let doubled = json!({"keys": [f.jwks()["keys"][0], f.jwks()["keys"][0]]});
    rejected(&f.sign(&f.header(), &f.good_claims()), &doubled);
    rejected(&f.sign(&f.header(), &f.good_claims()), &json!({}));
}

#[test]
fn time_claims_are_enforced() {
    let f = Forger::new();
    let jwks = f.jwks();
    let ok = f.sign(&f.header(), &f.good_claims());
    verify_jwt_svid(&ok, &jwks, "prod", AUD).unwrap();

    let with = |k: &str, v: Value| {
        let mut c = f.good_claims();
        c[k] = v;
        f.sign(&f.header(), &c)
    };
    let msg = rejected(&with("exp", json!(now() - 120)), &jwks);
    assert!(msg.to_lowercase().contains("expired"), "{msg}");
    // Within the 30 s leeway.
    verify_jwt_svid(&with("exp", json!(now() - 10)), &jwks, "prod", AUD).unwrap();
    rejected(&with("exp", json!((now() + 300) as f64 + 0.5)), &jwks);
    rejected(&with("exp", json!((now() + 300).to_string())), &jwks);
    rejected(&with("iat", json!(now() + 120)), &jwks);
    rejected(&with("nbf", json!(now() + 120)), &jwks);
    verify_jwt_svid(&with("nbf", json!(now() - 5)), &jwks, "prod", AUD).unwrap();
    let mut c = f.good_claims();
    c.as_object_mut().unwrap().remove("exp");
    rejected(&f.sign(&f.header(), &c), &jwks);
}

#[test]
fn header_typ_and_crit_are_checked() {
    let f = Forger::new();
    let jwks = f.jwks();
    for (typ, ok) in [
        ("JWT", true),
        ("JOSE", true),
        ("at+jwt", false),
        ("jwt ", false),
    ] {
        let mut h = f.header();
        h["typ"] = json!(typ);
        let res = verify_jwt_svid(&f.sign(&h, &f.good_claims()), &jwks, "prod", AUD);
        assert_eq!(res.is_ok(), ok, "{typ}: {res:?}");
    }
    let mut h = f.header();
    h.as_object_mut().unwrap().remove("typ");
    verify_jwt_svid(&f.sign(&h, &f.good_claims()), &jwks, "prod", AUD).unwrap();
    let mut h = f.header();
    h["crit"] = json!(["exp"]);
    rejected(&f.sign(&h, &f.good_claims()), &jwks);
}

#[test]
fn audience_and_trust_domain_must_match() {
    let ca = jwt_ca();
    let jwks = jwks_of(&ca);
    let signed = ca.sign_jwt_svid(&claims(&[AUD])).unwrap();
    match verify_jwt_svid(&signed.token, &jwks, "prod", "someone-else") {
        Err(PkiError::InvalidJwt(m)) => assert!(m.contains("aud"), "{m}"),
        other => panic!("{other:?}"),
    }
    match verify_jwt_svid(&signed.token, &jwks, "other", AUD) {
        Err(PkiError::InvalidJwt(m)) => assert!(m.contains("trust domain"), "{m}"),
        other => panic!("{other:?}"),
    }

    let f = Forger::new();
    let fj = f.jwks();
    for sub in [
        json!("spiffe://other/web"),
        json!("spiffe://prod"),
        json!("https://prod/web"),
        json!("spiffe://prod/a/../b"),
        json!(7),
    ] {
        let mut c = f.good_claims();
        c["sub"] = sub.clone();
        rejected(&f.sign(&f.header(), &c), &fj);
    }
    let mut c = f.good_claims();
    c.as_object_mut().unwrap().remove("aud");
    rejected(&f.sign(&f.header(), &c), &fj);
    c["aud"] = json!([]);
    rejected(&f.sign(&f.header(), &c), &fj);
}

#[test]
fn tampering_is_detected() {
    let ca = jwt_ca();
    let jwks = jwks_of(&ca);
    let signed = ca.sign_jwt_svid(&claims(&[AUD])).unwrap();
    let parts: Vec<&str> = signed.token.split('.').collect();

    let mut body = part(&signed.token, 1);
    body["sub"] = json!("spiffe://prod/ns/default/sa/admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(body.to_string()),
        parts[2]
    );
    assert!(rejected(&forged, &jwks).contains("signature"));

    let mut body = part(&signed.token, 1);
    body["exp"] = json!(body["exp"].as_i64().unwrap() + 86400);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(body.to_string()),
        parts[2]
    );
    assert!(rejected(&forged, &jwks).contains("signature"));

    let mut sig = B64URL.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let forged = format!("{}.{}.{}", parts[0], parts[1], B64URL.encode(sig));
    assert!(rejected(&forged, &jwks).contains("signature"));

    rejected(&format!("{}.{}", parts[0], parts[1]), &jwks);
    rejected(&format!("{}.x", signed.token), &jwks);
    rejected("", &jwks);
    rejected("a.b.c", &jwks);
}
