//! JWT-SVID parse + verify against a fixed ES256 key.

use sigil_types::SpiffeId;

/// The public half of a fixed P-256 key (kid `fuzz`); the seed corpus holds
/// a token it signed, so the fuzzer starts from a valid signature.
const FUZZ_KEY_X: &str = "WkNzkJoSU3qM2IX9jzNt_ciAeOqJJ9nrwXVSgS_Zan4";
const FUZZ_KEY_Y: &str = "xLya5L6bCJ7I1g8JGvgf8z_OVWbrNDdGtjKA7hwZAnc";

/// JWT-SVID verification: never panics; a token that verifies names a SPIFFE
/// ID in the trust domain, carries the audience, and verifies again.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "fuzz",
        "x": FUZZ_KEY_X, "y": FUZZ_KEY_Y,
    }]});
    let Ok(verified) = sigil_pki::verify_jwt_svid(token, &jwks, "example.org", "fuzz-aud") else {
        return;
    };
    let id = SpiffeId::parse(&verified.spiffe_id).expect("a verified sub is a SPIFFE ID");
    assert_eq!(id.trust_domain(), "example.org");
    let again = sigil_pki::verify_jwt_svid(token, &jwks, "example.org", "fuzz-aud")
        .expect("a verified token verifies again");
    assert_eq!(again.spiffe_id, verified.spiffe_id);
    assert!(
        sigil_pki::verify_jwt_svid(token, &jwks, "example.org", "other-aud").is_err(),
        "a token for fuzz-aud is refused for another audience"
    );
}
