//! Join method `iam`: the agent signs an AWS `sts:GetCallerIdentity` request
//! with its AWS credentials and hands it to us unsent; we forward it to STS,
//! which tells us whose signature it is. A fresh challenge must be one of
//! the signed headers, so a captured request cannot be replayed, and the
//! request may only go to an allowed STS origin, so an agent cannot point us
//! at an "STS" of its own that vouches for any identity.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use serde::Deserialize;
use sigil_proto::v1::JoinInit;
use sigil_types::{JoinAttributes, JoinMethodKind};

use super::{Conversation, JoinDenied, JoinMethod, Verified, check_rules, delegated, load_token};
use crate::state::AuthState;

/// The only request body we forward.
pub const GET_CALLER_IDENTITY_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// The header carrying the base64url challenge; it must be signed.
pub const CHALLENGE_HEADER: &str = "x-sigil-challenge";
/// Headers forwarded to STS (`host` is set by the HTTP client from the URL).
const FORWARDED_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "accept",
    "x-amz-date",
    "x-amz-security-token",
    CHALLENGE_HEADER,
];
const CHALLENGE_LEN: usize = 32;
/// Longest answer accepted (a signed request is well under 4 KiB).
const MAX_ANSWER: usize = 16 * 1024;

pub struct IamJoin;

/// The agent's answer: a signed, unsent GetCallerIdentity request.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A request that passed every local check and may be forwarded.
#[derive(Debug)]
pub struct CheckedRequest {
    pub url: Url,
    /// Allow-listed headers only, lower-case names.
    pub headers: Vec<(String, String)>,
}

#[async_trait]
impl JoinMethod for IamJoin {
    fn name(&self) -> &'static str {
        "iam"
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        // The challenge comes first, whatever the token: whether a client
        // is challenged must not tell it which token names exist.
        let req = challenge_and_check(conv, &state.sts_endpoints).await?;
        let token = load_token(state, &init.token, JoinMethodKind::Iam).await?;
        let endpoint = req.url.origin().ascii_serialization();
        let identity = call_sts(state, &req).await.map_err(|d| {
            let audit =
                serde_json::json!({ "token": token.metadata.name, "sts_endpoint": endpoint });
            d.with_audit(audit)
        })?;
        let attrs = identity.attributes();
        let mut audit = check_rules(&token, &attrs)?;
        audit["sts_endpoint"] = serde_json::Value::String(endpoint);
        Ok(delegated(&token, attrs, audit))
    }
}

/// Issue a fresh challenge and check the agent's signed request against it
/// and against the allowed STS origins — everything that can be checked
/// without contacting STS.
pub async fn challenge_and_check(
    conv: &mut dyn Conversation,
    allowed: &[String],
) -> Result<CheckedRequest, JoinDenied> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    aws_lc_rs::rand::fill(&mut challenge)
        .map_err(|_| JoinDenied::unavailable("no randomness for the iam challenge"))?;
    let answer = conv.challenge(challenge.to_vec()).await?;
    check_answer(&answer, &challenge, allowed)
}

/// The local checks of a signed request, in order: shape, method, URL,
/// origin, body, headers, challenge, signature coverage.
pub fn check_answer(
    answer: &[u8],
    challenge: &[u8],
    allowed: &[String],
) -> Result<CheckedRequest, JoinDenied> {
    if answer.len() > MAX_ANSWER {
        return Err(JoinDenied::new("iam answer too large"));
    }
    let req: SignedRequest = serde_json::from_slice(answer)
        .map_err(|e| JoinDenied::new(format!("iam answer is not a signed request: {e}")))?;
    if req.method != "POST" {
        return Err(JoinDenied::new("iam request method must be POST"));
    }
    let url = check_url(&req.url)?;
    if !origin_allowed(&url, allowed) {
        return Err(JoinDenied::new(format!(
            "STS endpoint {} is not allowed",
            url.origin().ascii_serialization()
        ))
        .with_audit(serde_json::json!({ "sts_endpoint": url.origin().ascii_serialization() })));
    }
    if req.body != GET_CALLER_IDENTITY_BODY {
        return Err(JoinDenied::new(
            "iam request body is not sts:GetCallerIdentity",
        ));
    }
    let headers = check_headers(&req.headers, &url, challenge)?;
    Ok(CheckedRequest { url, headers })
}

/// `https://host[:port]/` and nothing else.
pub fn check_url(raw: &str) -> Result<Url, JoinDenied> {
    let url =
        Url::parse(raw).map_err(|e| JoinDenied::new(format!("iam request URL invalid: {e}")))?;
    let plain = url.scheme() == "https"
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        // The parser drops a lone trailing `?`/`#`; refuse those too.
        && !raw.contains(['?', '#', '@']);
    if !plain {
        return Err(JoinDenied::new(
            "iam request URL must be https://host[:port]/ without query, user or fragment",
        ));
    }
    Ok(url)
}

/// The URL's origin is one of `--sts-endpoint`, or (none configured) one
/// of AWS's own STS hosts on the default port.
pub fn origin_allowed(url: &Url, allowed: &[String]) -> bool {
    let origin = url.origin().ascii_serialization();
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| Url::parse(a).is_ok_and(|a| a.origin().ascii_serialization() == origin));
    }
    url.port().is_none() && url.host_str().is_some_and(is_aws_sts_host)
}

/// `sts.amazonaws.com`, `sts.<region>.amazonaws.com`,
/// `sts-fips.<region>.amazonaws.com`, `sts.<region>.amazonaws.com.cn`.
pub fn is_aws_sts_host(host: &str) -> bool {
    if host == "sts.amazonaws.com" {
        return true;
    }
    let region_ok = |r: &str| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let regional = |prefix: &str, suffix: &str| {
        host.strip_prefix(prefix)
            .and_then(|h| h.strip_suffix(suffix))
            .is_some_and(region_ok)
    };
    regional("sts.", ".amazonaws.com")
        || regional("sts-fips.", ".amazonaws.com")
        || regional("sts.", ".amazonaws.com.cn")
}

/// The URL's authority as a client sends it in `Host`.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

fn check_headers(
    raw: &[(String, String)],
    url: &Url,
    challenge: &[u8],
) -> Result<Vec<(String, String)>, JoinDenied> {
    let mut seen = BTreeMap::<String, &str>::new();
    for (name, value) in raw {
        if seen.insert(name.to_ascii_lowercase(), value).is_some() {
            return Err(JoinDenied::new(format!(
                "iam request repeats header {:?}",
                name.to_ascii_lowercase()
            )));
        }
    }
    if seen.get("host").copied() != Some(authority(url).as_str()) {
        return Err(JoinDenied::new(
            "iam request host header does not match its URL",
        ));
    }
    let presented = seen.get(CHALLENGE_HEADER).copied().unwrap_or_default();
    let expected = URL_SAFE_NO_PAD.encode(challenge);
    if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes())
        .is_err()
    {
        return Err(JoinDenied::new(
            "iam request does not carry the challenge issued for this join",
        ));
    }
    let auth = seen.get("authorization").copied().unwrap_or_default();
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(JoinDenied::new("iam request is not SigV4-signed"));
    };
    // Exactly Credential, SignedHeaders and Signature, once each: a second
    // SignedHeaders list could satisfy this check while STS reads the other.
    let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
    let count = |prefix: &str| parts.iter().filter(|p| p.starts_with(prefix)).count();
    if parts.len() != 3
        || count("Credential=") != 1
        || count("SignedHeaders=") != 1
        || count("Signature=") != 1
    {
        return Err(JoinDenied::new(
            "iam request authorization must have exactly Credential, SignedHeaders and Signature",
        ));
    }
    let signed: Vec<&str> = parts
        .iter()
        .filter_map(|p| p.strip_prefix("SignedHeaders="))
        .flat_map(|s| s.split(';'))
        .collect();
    for needed in ["host", CHALLENGE_HEADER] {
        if !signed.contains(&needed) {
            return Err(JoinDenied::new(format!(
                "iam request signature does not cover {needed}"
            )));
        }
    }
    // A signed header we would not forward would only fail at STS; say so now.
    if let Some(h) = signed
        .iter()
        .find(|h| **h != "host" && !FORWARDED_HEADERS.contains(h))
    {
        return Err(JoinDenied::new(format!(
            "iam request signs header {h:?}, which is not forwarded"
        )));
    }
    let forwarded: Vec<(String, String)> = seen
        .into_iter()
        .filter(|(k, _)| FORWARDED_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    // An unsendable value (control characters) is the agent's fault, not an
    // outage: refuse it here rather than fail in the HTTP client.
    if let Some((k, _)) = forwarded
        .iter()
        .find(|(_, v)| reqwest::header::HeaderValue::from_str(v).is_err())
    {
        return Err(JoinDenied::new(format!(
            "iam request header {k:?} has an invalid value"
        )));
    }
    Ok(forwarded)
}

/// Who STS says signed the request.
#[derive(Debug, PartialEq, Clone)]
pub struct CallerIdentity {
    pub account: String,
    pub arn: String,
    pub user_id: String,
}

impl CallerIdentity {
    fn attributes(&self) -> JoinAttributes {
        JoinAttributes::from([
            ("aws_account".to_string(), self.account.clone()),
            ("aws_arn".to_string(), self.arn.clone()),
            ("aws_user_id".to_string(), self.user_id.clone()),
        ])
    }
}

async fn call_sts(state: &AuthState, req: &CheckedRequest) -> Result<CallerIdentity, JoinDenied> {
    let url = req.url.as_str();
    let mut b = state
        .outbound
        .client()
        .post(req.url.clone())
        .body(GET_CALLER_IDENTITY_BODY);
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let resp = b
        .send()
        .await
        .map_err(|e| JoinDenied::unavailable(format!("STS {url} unreachable: {e}")))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(JoinDenied::unavailable(format!(
            "STS {url} answered HTTP {status}"
        )));
    }
    if status != reqwest::StatusCode::OK {
        return Err(JoinDenied::new(format!(
            "STS {url} refused the signed request: HTTP {status}"
        )));
    }
    let body = crate::outbound::read_body(url, resp)
        .await
        .map_err(|e| JoinDenied::unavailable(format!("reading STS answer: {e}")))?;
    parse_caller_identity(&body).ok_or_else(|| {
        JoinDenied::new(format!(
            "STS {url} answer is not a GetCallerIdentity result"
        ))
    })
}

/// STS's JSON answer (`Accept: application/json`), or its XML one.
pub fn parse_caller_identity(body: &[u8]) -> Option<CallerIdentity> {
    let id = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let r = &v["GetCallerIdentityResponse"]["GetCallerIdentityResult"];
            let field = |k: &str| r[k].as_str().map(str::to_string);
            CallerIdentity {
                account: field("Account")?,
                arn: field("Arn")?,
                user_id: field("UserId")?,
            }
        }
        Err(_) => {
            let xml = std::str::from_utf8(body).ok()?;
            let result = xml_tag(xml, "GetCallerIdentityResult")?;
            CallerIdentity {
                account: xml_tag(result, "Account")?.trim().to_string(),
                arn: xml_tag(result, "Arn")?.trim().to_string(),
                user_id: xml_tag(result, "UserId")?.trim().to_string(),
            }
        }
    };
    let sane = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
    };
    let ok = id.account.len() == 12
        && id.account.bytes().all(|b| b.is_ascii_digit())
        && id.arn.starts_with("arn:aws")
        && sane(&id.arn, 2048)
        && sane(&id.user_id, 256);
    ok.then_some(id)
}

/// The text between `<tag>` and `</tag>` (STS's XML has no attributes or
/// escapes in these elements).
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

#[cfg(test)]
#[path = "iam_tests.rs"]
mod tests;
