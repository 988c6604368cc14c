//! JWT-SVID validation against a JWKS. The JOSE header and the SPIFFE-specific rules are
//! checked here; signature, `exp`, `nbf` and `aud` go through `jsonwebtoken` (aws-lc-rs).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::svid::parse_workload_id;
use crate::{PkiError, Result};

/// Clock leeway for `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A JWT-SVID that passed [`verify_jwt_svid`].
#[derive(Clone, Debug)]
pub struct VerifiedJwtSvid {
    /// The `sub` claim: the workload's SPIFFE ID.
    pub spiffe_id: String,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    /// `exp` as a time.
    pub expires: OffsetDateTime,
}

fn reject(reason: impl Into<String>) -> PkiError {
    PkiError::InvalidJwt(reason.into())
}

/// Decode and check the protected header; returns the `kid`.
fn check_header(token: &str) -> Result<String> {
    let encoded = token
        .split('.')
        .next()
        .ok_or_else(|| reject("not a JWS compact token"))?;
    let bytes = B64URL
        .decode(encoded)
        .map_err(|_| reject("header is not base64url"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| reject("header is not a JSON object"))?;
    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        Some(other) => return Err(reject(format!("alg '{other}' is not accepted; only ES256"))),
        None => return Err(reject("header has no alg")),
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(_) => return Err(reject("typ must be JWT or JOSE when present")),
    }
    if header.contains_key("crit") {
        return Err(reject("critical header parameters are not supported"));
    }
    match header.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => Ok(kid.to_string()),
        _ => Err(reject("header has no kid")),
    }
}

/// Find the one P-256 key with `kid` in a JWKS and build a verification key from it.
fn find_key(jwks: &Value, kid: &str) -> Result<DecodingKey> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| reject("JWKS has no keys array"))?;
    let mut matching = keys
        .iter()
        .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid));
    let jwk = matching
        .next()
        .ok_or_else(|| reject(format!("kid '{kid}' is not in the key set")))?;
    if matching.next().is_some() {
        return Err(reject(format!("kid '{kid}' appears more than once")));
    }
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    if member("kty") != Some("EC") || member("crv") != Some("P-256") {
        return Err(reject(format!("key '{kid}' is not an EC P-256 key")));
    }
    if jwk.get("alg").is_some_and(|a| a != "ES256") {
        return Err(reject(format!("key '{kid}' is not for ES256")));
    }
    if jwk
        .get("use")
        .is_some_and(|u| u != "sig" && u != "jwt-svid")
    {
        return Err(reject(format!("key '{kid}' is not a signing key")));
    }
    let coord = |name: &str| -> Result<&str> {
        let v = member(name).ok_or_else(|| reject(format!("key '{kid}' lacks {name}")))?;
        match B64URL.decode(v) {
            Ok(b) if b.len() == 32 => Ok(v),
            _ => Err(reject(format!("key '{kid}' has a malformed {name}"))),
        }
    };
    DecodingKey::from_ec_components(coord("x")?, coord("y")?)
        .map_err(|e| reject(format!("key '{kid}' is unusable: {e}")))
}

/// Say what jsonwebtoken refused in words a caller can act on.
fn decode_error(e: &jsonwebtoken::errors::Error, kid: &str, audience: &str) -> PkiError {
    use jsonwebtoken::errors::ErrorKind;
    reject(match e.kind() {
        ErrorKind::InvalidSignature => format!("signature does not verify with key '{kid}'"),
        ErrorKind::ExpiredSignature => "token has expired".to_string(),
        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidAudience => format!("aud does not contain '{audience}'"),
        ErrorKind::MissingRequiredClaim(c) => format!("claim '{c}' is missing or malformed"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim '{c}' is malformed"),
        _ => e.to_string(),
    })
}

/// Validates a JWT-SVID against a JWKS document: `alg` must be ES256 (none, HS*, and
/// everything else are refused), `kid` present and found in the set, signature valid, `typ`
/// absent or JWT/JOSE, `sub` a SPIFFE ID in `trust_domain`, `aud` contains `audience`,
/// `exp` an integer in the future, `iat`/`nbf` not in the future (leeway 30 s each).
pub fn verify_jwt_svid(
    token: &str,
    jwks: &Value,
    trust_domain: &str,
    audience: &str,
) -> Result<VerifiedJwtSvid> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(reject("token is too long"));
    }
    if token.split('.').count() != 3 {
        return Err(reject(
            "not a JWS compact token (three dot-separated parts)",
        ));
    }
    let kid = check_header(token)?;
    let key = find_key(jwks, &kid)?;

    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| decode_error(&e, &kid, audience))?;
    let claims = data.claims;

    // jsonwebtoken accepted exp; SPIFFE additionally wants it to be a JSON integer.
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| reject("exp must be an integer"))?;
    let expires =
        OffsetDateTime::from_unix_timestamp(exp).map_err(|_| reject("exp out of range"))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let leeway = LEEWAY_SECS as i64;
    if exp < now - leeway {
        return Err(reject("token has expired"));
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_f64().ok_or_else(|| reject("iat must be a number"))?;
        if iat > (now + leeway) as f64 {
            return Err(reject("iat is in the future"));
        }
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| reject("sub must be a string"))?;
    parse_workload_id(sub, trust_domain)
        .map_err(|e| reject(format!("sub is not a SPIFFE ID of '{trust_domain}': {e}")))?;
    Ok(VerifiedJwtSvid {
        spiffe_id: sub.to_string(),
        expires,
        claims,
    })
}
