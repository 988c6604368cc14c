//! Verification of OIDC ID tokens (compact JWS) for the `github`, `gitlab`,
//! `oidc` and `kubernetes` join methods. Keys come from the issuer's OIDC
//! discovery document or from a JWKS pasted into the token. The header is
//! checked by hand first, so `none` and HMAC (an HS256 token "signed" with a
//! public key as the secret) are refused before any key is looked at; the
//! signature goes through `jsonwebtoken` (aws-lc-rs); the claims are checked
//! here against an explicit `now`, so every refusal says exactly why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use sigil_types::{JoinAttributes, Token};

use super::{JoinDenied, Verified, check_rules, delegated};
use crate::outbound::Outbound;

/// Longest ID token accepted (GitHub's are ~1.5 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew tolerated for `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: i64 = 60;
/// How long fetched keys are trusted without a refetch.
const KEYS_TTL: Duration = Duration::from_secs(15 * 60);
/// Least time between two fetches for one issuer, so a flood of tokens with
/// made-up `kid`s cannot turn us into a load generator against the issuer.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Most issuers whose keys are cached; issuers come from tokens an admin wrote.
const MAX_ISSUERS: usize = 256;
/// Most keys taken from one JWKS.
const MAX_KEYS: usize = 64;

/// Why a token was refused. `UnknownKid` is kept apart because it may only
/// mean our keys are stale.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    UnknownKid(String),
    Invalid(String),
}

impl Refusal {
    fn reason(&self) -> String {
        match self {
            Refusal::UnknownKid(kid) => format!("unknown kid {kid:?}"),
            Refusal::Invalid(r) => r.clone(),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Refusal {
    Refusal::Invalid(reason.into())
}

/// The ID token in `JoinInit.evidence`: UTF-8, at most [`MAX_TOKEN_LEN`],
/// surrounding whitespace (a trailing newline from a file) ignored.
pub fn id_token(evidence: &[u8]) -> Result<&str, JoinDenied> {
    if evidence.len() > MAX_TOKEN_LEN {
        return Err(JoinDenied::new(format!(
            "ID token is {} bytes, more than {MAX_TOKEN_LEN}",
            evidence.len()
        )));
    }
    let text = std::str::from_utf8(evidence)
        .map_err(|_| JoinDenied::new("ID token is not UTF-8"))?
        .trim();
    if text.is_empty() {
        return Err(JoinDenied::new("no ID token presented"));
    }
    Ok(text)
}

/// The protected header fields that matter.
struct Head {
    alg: Algorithm,
    kid: Option<String>,
}

/// Decode the header and refuse every algorithm outside the allow list
/// before anything else happens.
fn parse_head(token: &str) -> Result<Head, Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid(format!("token longer than {MAX_TOKEN_LEN} bytes")));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(invalid("not a compact JWS (three dot-separated parts)"));
    }
    let bytes = B64URL
        .decode(parts[0])
        .map_err(|_| invalid("header is not base64url"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| invalid("header is not a JSON object"))?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        None => return Err(invalid("header has no alg")),
        Some(a) if a.eq_ignore_ascii_case("none") => return Err(invalid("alg none refused")),
        Some(a) if a.starts_with("HS") => {
            return Err(invalid(format!(
                "alg {a} refused (HMAC is not a signature)"
            )));
        }
        Some(a) => allowed_alg(a).ok_or_else(|| invalid(format!("alg {a:?} is not accepted")))?,
    };
    if header.contains_key("crit") {
        return Err(invalid("critical header parameters are not supported"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(invalid("kid must be a non-empty string")),
    };
    Ok(Head { alg, kid })
}

fn allowed_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Whether a JWK may verify `alg`: right key type and curve, `alg` and
/// `use` (when present) consistent.
fn key_fits(jwk: &Value, alg: Algorithm) -> bool {
    let member = |n: &str| jwk.get(n).and_then(Value::as_str);
    let shape = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => member("kty") == Some("RSA"),
        Algorithm::ES256 => member("kty") == Some("EC") && member("crv") == Some("P-256"),
        Algorithm::ES384 => member("kty") == Some("EC") && member("crv") == Some("P-384"),
        Algorithm::EdDSA => member("kty") == Some("OKP") && member("crv") == Some("Ed25519"),
        _ => false,
    };
    let alg_ok = jwk
        .get("alg")
        .is_none_or(|a| a.as_str() == Some(format!("{alg:?}").as_str()));
    let use_ok = jwk.get("use").is_none_or(|u| u == "sig");
    shape && alg_ok && use_ok
}

/// The key that verifies this token: the one with its `kid` fitting its
/// alg, or — for a token without `kid` — the only key of the set.
fn select_key<'a>(keys: &'a [Value], head: &Head) -> Result<&'a Value, Refusal> {
    let jwk = match &head.kid {
        Some(kid) => {
            let named: Vec<&Value> = keys
                .iter()
                .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(Refusal::UnknownKid(kid.clone()));
            }
            let fitting: Vec<&Value> = named
                .into_iter()
                .filter(|k| key_fits(k, head.alg))
                .collect();
            match fitting.as_slice() {
                [one] => return Ok(one),
                [] => {
                    return Err(invalid(format!(
                        "key {kid:?} does not fit alg {:?}",
                        head.alg
                    )));
                }
                _ => return Err(invalid(format!("kid {kid:?} names several keys"))),
            }
        }
        None => match keys {
            [one] => one,
            _ => {
                return Err(invalid(format!(
                    "token has no kid and the key set has {} keys",
                    keys.len()
                )));
            }
        },
    };
    if key_fits(jwk, head.alg) {
        Ok(jwk)
    } else {
        Err(invalid(format!("the key does not fit alg {:?}", head.alg)))
    }
}

/// The `keys` of a JWKS document (at most [`MAX_KEYS`]).
fn jwks_keys(jwks: &Value) -> Result<Vec<Value>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no keys array")?;
    Ok(keys.iter().take(MAX_KEYS).cloned().collect())
}

fn unix_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn number_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| Some(f as i64))
            .ok_or_else(|| invalid(format!("{name} is not a number"))),
    }
}

/// The registered claims: `iss` exact (when expected), `aud` contains
/// `audience`, `exp` required, `nbf` and `iat` honoured, 60 s leeway.
fn check_claims(
    claims: &Map<String, Value>,
    expected_iss: Option<&str>,
    audience: &str,
    now: i64,
) -> Result<(), Refusal> {
    if let Some(want) = expected_iss {
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if iss == want => {}
            Some(iss) => return Err(invalid(format!("issuer {iss:?} is not {want:?}"))),
            None => return Err(invalid("token has no iss")),
        }
    }
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(invalid("token has no aud")),
    };
    if !auds.contains(&audience) {
        return Err(invalid(format!(
            "audience {auds:?} does not contain {audience:?}"
        )));
    }
    let exp = number_claim(claims, "exp")?.ok_or_else(|| invalid("token has no exp"))?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(invalid(format!("expired at {}", unix_time(exp))));
    }
    if let Some(nbf) = number_claim(claims, "nbf")?
        && nbf.saturating_sub(LEEWAY_SECS) > now
    {
        return Err(invalid(format!("not valid before {}", unix_time(nbf))));
    }
    if let Some(iat) = number_claim(claims, "iat")?
        && iat.saturating_sub(LEEWAY_SECS) > now
    {
        return Err(invalid(format!(
            "issued in the future ({})",
            unix_time(iat)
        )));
    }
    Ok(())
}

/// Verify `token` against the keys of a JWKS document and return its claims.
/// `expected_iss` `None` skips the issuer check (a pasted Kubernetes JWKS
/// without an issuer); `now` is Unix seconds.
pub fn verify_with_jwks(
    token: &str,
    jwks: &Value,
    expected_iss: Option<&str>,
    audience: &str,
    now: i64,
) -> Result<Value, Refusal> {
    let head = parse_head(token)?;
    let keys = jwks_keys(jwks).map_err(invalid)?;
    verify_with_keys(token, &head, &keys, expected_iss, audience, now)
}

fn verify_with_keys(
    token: &str,
    head: &Head,
    keys: &[Value],
    expected_iss: Option<&str>,
    audience: &str,
    now: i64,
) -> Result<Value, Refusal> {
    let jwk_json = select_key(keys, head)?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk_json.clone())
        .map_err(|e| invalid(format!("the key is malformed: {e}")))?;
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|e| invalid(format!("the key is unusable: {e}")))?;
    // jsonwebtoken checks the signature with exactly the header's alg; the
    // claims are checked below against our own clock.
    let mut validation = Validation::new(head.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                invalid("signature does not verify")
            }
            _ => invalid(format!("token rejected: {e}")),
        },
    )?;
    check_claims(&data.claims, expected_iss, audience, now)?;
    Ok(Value::Object(data.claims))
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Verify against a JWKS given as text (kubernetes `static_jwks`).
pub fn verify_static(
    token: &str,
    jwks_text: &str,
    expected_iss: Option<&str>,
    audience: &str,
) -> Result<Value, JoinDenied> {
    let jwks: Value = serde_json::from_str(jwks_text)
        .map_err(|_| JoinDenied::new("the token's static_jwks is not JSON"))?;
    verify_with_jwks(token, &jwks, expected_iss, audience, now_unix())
        .map_err(|r| JoinDenied::new(r.reason()))
}

/// One issuer's cached keys.
#[derive(Default)]
struct IssuerKeys {
    keys: Option<Arc<Vec<Value>>>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Keys of discovered issuers, shared by the ID-token methods. Each issuer
/// has its own lock, so one fetch serves all joins waiting on it and a slow
/// issuer holds up nobody else.
pub struct JwksCache {
    issuers: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<IssuerKeys>>>>,
    refetch_interval: Duration,
}

impl Default for JwksCache {
    fn default() -> Self {
        JwksCache::new(REFETCH_INTERVAL)
    }
}

impl JwksCache {
    pub fn new(refetch_interval: Duration) -> Self {
        JwksCache {
            issuers: std::sync::Mutex::new(HashMap::new()),
            refetch_interval,
        }
    }

    fn entry(&self, issuer: &str) -> Arc<tokio::sync::Mutex<IssuerKeys>> {
        let mut map = self
            .issuers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !map.contains_key(issuer) && map.len() >= MAX_ISSUERS {
            // Bounded: forget an arbitrary issuer; it refetches when used.
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.entry(issuer.to_string()).or_default().clone()
    }

    /// Verify `token` from `issuer` (whose `iss` it must carry), with keys
    /// from the issuer's discovery document.
    pub async fn verify(
        &self,
        outbound: &Outbound,
        issuer: &str,
        token: &str,
        audience: &str,
    ) -> Result<Value, JoinDenied> {
        // Refuse bad headers before touching the network.
        let head = parse_head(token).map_err(|r| JoinDenied::new(r.reason()))?;
        let entry = self.entry(issuer);
        let mut cached = entry.lock().await;
        let fresh = cached.fetched.is_some_and(|t| t.elapsed() < KEYS_TTL);
        if !fresh {
            cached.keys = None;
        }
        let verify = |keys: &[Value]| {
            verify_with_keys(token, &head, keys, Some(issuer), audience, now_unix())
        };
        let stale_kid = match cached.keys.as_deref().map(|k| verify(k)) {
            Some(Ok(claims)) => return Ok(claims),
            Some(Err(Refusal::Invalid(r))) => return Err(JoinDenied::new(r)),
            Some(Err(Refusal::UnknownKid(kid))) => Some(kid),
            None => None,
        };
        if let Some(t) = cached.last_attempt
            && t.elapsed() < self.refetch_interval
        {
            return Err(match stale_kid {
                Some(kid) => JoinDenied::new(format!(
                    "unknown kid {kid:?} (keys of {issuer} last requested {}s ago)",
                    t.elapsed().as_secs()
                )),
                None => JoinDenied::unavailable(format!(
                    "keys of {issuer} unavailable (last fetch failed {}s ago)",
                    t.elapsed().as_secs()
                )),
            });
        }
        cached.last_attempt = Some(Instant::now());
        let keys = Arc::new(fetch_keys(outbound, issuer).await?);
        cached.keys = Some(keys.clone());
        cached.fetched = Some(Instant::now());
        verify(&keys).map_err(|r| JoinDenied::new(r.reason()))
    }
}

/// Discovery, then the JWKS it names. Unreachable → unavailable (the agent
/// retries); a misbehaving issuer → denied (and audited).
async fn fetch_keys(outbound: &Outbound, issuer: &str) -> Result<Vec<Value>, JoinDenied> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = outbound
        .get_json(&url)
        .await
        .map_err(|e| JoinDenied::unavailable(format!("OIDC discovery failed: {e}")))?;
    match doc.get("issuer").and_then(Value::as_str) {
        Some(i) if i == issuer => {}
        Some(other) => {
            return Err(JoinDenied::new(format!(
                "discovery document of {issuer} names issuer {other:?}"
            )));
        }
        None => {
            return Err(JoinDenied::new(format!(
                "discovery document of {issuer} names no issuer"
            )));
        }
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("https://"))
        .ok_or_else(|| {
            JoinDenied::new(format!(
                "discovery document of {issuer} has no https jwks_uri"
            ))
        })?;
    let jwks = outbound
        .get_json(jwks_uri)
        .await
        .map_err(|e| JoinDenied::unavailable(format!("JWKS fetch failed: {e}")))?;
    jwks_keys(&jwks).map_err(|e| JoinDenied::new(format!("{jwks_uri}: {e}")))
}

/// A verifier refusal with the token and issuer added for the audit log
/// (unless it already carries audit fields).
pub fn in_context(mut denied: JoinDenied, token: &Token, issuer: &str) -> JoinDenied {
    if denied.audit.is_null() {
        denied.audit = serde_json::json!({ "token": token.metadata.name, "issuer": issuer });
    }
    denied
}

impl JwksCache {
    /// The whole check of an ID-token method whose keys come from the
    /// issuer's discovery document: verify the token in `evidence`, turn its
    /// claims into attributes, match the token's allow rules.
    pub async fn verify_join(
        &self,
        state: &crate::state::AuthState,
        evidence: &[u8],
        token: &Token,
        issuer: &str,
        audience: &str,
        attributes: impl Fn(&Value) -> JoinAttributes,
    ) -> Result<Verified, JoinDenied> {
        let claims = async {
            let jwt = id_token(evidence)?;
            self.verify(&state.outbound, issuer, jwt, audience).await
        }
        .await
        .map_err(|d| in_context(d, token, issuer))?;
        allow(token, attributes(&claims), issuer)
    }
}

/// The shared tail of the ID-token methods: the verified attributes must
/// match an allow rule; the outcome is a delegated (re-proving) identity.
pub fn allow(token: &Token, attrs: JoinAttributes, issuer: &str) -> Result<Verified, JoinDenied> {
    let add_issuer = |audit: &mut Value| {
        if let Some(o) = audit.as_object_mut() {
            o.insert("issuer".into(), Value::String(issuer.to_string()));
        }
    };
    let mut audit = check_rules(token, &attrs).map_err(|mut d| {
        add_issuer(&mut d.audit);
        d
    })?;
    add_issuer(&mut audit);
    Ok(delegated(token, attrs, audit))
}

#[cfg(test)]
#[path = "jwt_verifier_tests.rs"]
mod tests;
