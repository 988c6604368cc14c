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
        let token = load_token(state, &init.token, JoinMethodKind::Iam).await?;
        let req = challenge_and_check(conv, &state.sts_endpoints).await?;
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
    let signed: Vec<&str> = rest
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("SignedHeaders="))
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
mod tests {
    use std::time::SystemTime;

    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;

    use super::*;

    const FIXTURE: &str = "https://127.0.0.1:9443";

    /// A real SigV4-signed GetCallerIdentity request carrying `challenge`,
    /// built the way the agent builds it.
    fn signed(endpoint: &str, challenge: &[u8]) -> serde_json::Value {
        let url = Url::parse(endpoint).unwrap();
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), authority(&url)),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            ),
            ("accept".into(), "application/json".into()),
            (CHALLENGE_HEADER.into(), URL_SAFE_NO_PAD.encode(challenge)),
        ];
        let identity = Credentials::new("AKIDTEST", "s3cret", None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("sts")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(GET_CALLER_IDENTITY_BODY.as_bytes()),
        )
        .unwrap();
        let (instr, _) = sign(signable, &params).unwrap().into_parts();
        for (k, v) in instr.headers() {
            headers.push((k.to_string(), v.to_string()));
        }
        serde_json::json!({
            "url": url.as_str(), "method": "POST", "headers": headers,
            "body": GET_CALLER_IDENTITY_BODY,
        })
    }

    /// Answers every challenge with `answer(challenge)`.
    struct TestConversation<F: Fn(&[u8]) -> serde_json::Value + Send> {
        answer: F,
        challenges: usize,
    }

    #[async_trait]
    impl<F: Fn(&[u8]) -> serde_json::Value + Send> Conversation for TestConversation<F> {
        async fn challenge(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, JoinDenied> {
            assert_eq!(payload.len(), CHALLENGE_LEN);
            self.challenges += 1;
            Ok(serde_json::to_vec(&(self.answer)(&payload)).unwrap())
        }
    }

    fn allowed() -> Vec<String> {
        vec![FIXTURE.to_string()]
    }

    fn check(v: &serde_json::Value, challenge: &[u8]) -> Result<CheckedRequest, JoinDenied> {
        check_answer(&serde_json::to_vec(v).unwrap(), challenge, &allowed())
    }

    fn reason(r: Result<CheckedRequest, JoinDenied>) -> String {
        r.expect_err("must be denied").reason
    }

    fn set_header(v: &mut serde_json::Value, name: &str, value: &str) {
        for h in v["headers"].as_array_mut().unwrap() {
            if h[0] == name {
                h[1] = serde_json::Value::String(value.into());
            }
        }
    }

    #[tokio::test]
    async fn a_request_for_the_issued_challenge_passes() {
        let mut conv = TestConversation {
            answer: |c: &[u8]| signed(FIXTURE, c),
            challenges: 0,
        };
        let req = challenge_and_check(&mut conv, &allowed()).await.unwrap();
        assert_eq!(conv.challenges, 1);
        assert_eq!(req.url.as_str(), "https://127.0.0.1:9443/");
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            !names.contains(&"host"),
            "host comes from the URL: {names:?}"
        );
        assert!(names.contains(&"authorization") && names.contains(&CHALLENGE_HEADER));
    }

    /// A correctly signed request made for another challenge (a replay) is
    /// refused before anything is sent anywhere.
    #[tokio::test]
    async fn a_replayed_request_for_another_challenge_is_denied() {
        let mut conv = TestConversation {
            answer: |_: &[u8]| signed(FIXTURE, &[7u8; 32]),
            challenges: 0,
        };
        let err = challenge_and_check(&mut conv, &allowed())
            .await
            .unwrap_err();
        assert!(!err.unavailable);
        assert!(err.reason.contains("challenge"), "{}", err.reason);
    }

    #[test]
    fn urls_must_be_plain_https_roots() {
        for bad in [
            "http://sts.amazonaws.com/",
            "https://sts.amazonaws.com/x",
            "https://sts.amazonaws.com/?Action=x",
            "https://sts.amazonaws.com/?",
            "https://sts.amazonaws.com/#f",
            "https://user@sts.amazonaws.com/",
            "https://u:p@sts.amazonaws.com/",
            "not a url",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url("https://sts.amazonaws.com/").is_ok());
        assert!(check_url("https://127.0.0.1:9443/").is_ok());
    }

    #[test]
    fn origins_are_the_configured_ones_or_aws() {
        let u = |s: &str| Url::parse(s).unwrap();
        let cfg = vec!["https://127.0.0.1:9443/".to_string()];
        assert!(origin_allowed(&u("https://127.0.0.1:9443/"), &cfg));
        assert!(!origin_allowed(&u("https://127.0.0.1:9444/"), &cfg));
        assert!(!origin_allowed(&u("https://sts.amazonaws.com/"), &cfg));
        for ok in [
            "https://sts.amazonaws.com/",
            "https://sts.eu-west-1.amazonaws.com/",
            "https://sts-fips.us-east-1.amazonaws.com/",
            "https://sts.cn-north-1.amazonaws.com.cn/",
        ] {
            assert!(origin_allowed(&u(ok), &[]), "{ok}");
        }
        for bad in [
            "https://sts.amazonaws.com:8443/",
            "https://sts.evil.com/",
            "https://sts.amazonaws.com.evil.com/",
            "https://sts.a.b.amazonaws.com/",
            "https://sts..amazonaws.com/",
            "https://evilsts.amazonaws.com/",
            "https://127.0.0.1:9443/",
        ] {
            assert!(!origin_allowed(&u(bad), &[]), "{bad}");
        }
    }

    #[test]
    fn forged_sts_host_is_denied() {
        let c = [1u8; 32];
        let r = reason(check(&signed("https://127.0.0.1:9444", &c), &c));
        assert!(r.contains("not allowed"), "{r}");
    }

    #[test]
    fn header_checks() {
        let c = [1u8; 32];
        assert!(check(&signed(FIXTURE, &c), &c).is_ok());

        let mut v = signed(FIXTURE, &c);
        set_header(&mut v, "host", "127.0.0.1:1");
        assert!(reason(check(&v, &c)).contains("host"));

        let mut v = signed(FIXTURE, &c);
        v["headers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(["X-Sigil-Challenge", "again"]));
        assert!(reason(check(&v, &c)).contains("repeats"));

        let mut v = signed(FIXTURE, &c);
        let auth = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "authorization")
            .unwrap()[1]
            .as_str()
            .unwrap()
            .replace(";x-sigil-challenge", "");
        set_header(&mut v, "authorization", &auth);
        assert!(reason(check(&v, &c)).contains("does not cover x-sigil-challenge"));

        let mut v = signed(FIXTURE, &c);
        set_header(&mut v, "authorization", "Basic Zm9vOmJhcg==");
        assert!(reason(check(&v, &c)).contains("SigV4"));

        let mut v = signed(FIXTURE, &c);
        v["body"] = "Action=AssumeRole&Version=2011-06-15".into();
        assert!(reason(check(&v, &c)).contains("body"));

        let mut v = signed(FIXTURE, &c);
        set_header(&mut v, "accept", "application/json\r\nx-evil: 1");
        assert!(reason(check(&v, &c)).contains("invalid value"));

        let mut v = signed(FIXTURE, &c);
        v["method"] = "GET".into();
        assert!(reason(check(&v, &c)).contains("POST"));

        assert!(check_answer(b"{}", &c, &allowed()).is_err());
    }

    #[test]
    fn parses_json_and_xml_answers() {
        let want = CallerIdentity {
            account: "123456789012".into(),
            arn: "arn:aws:sts::123456789012:assumed-role/deployer/i-1".into(),
            user_id: "AROAEXAMPLE:i-1".into(),
        };
        let json = serde_json::json!({"GetCallerIdentityResponse": {"GetCallerIdentityResult": {
            "Account": "123456789012",
            "Arn": "arn:aws:sts::123456789012:assumed-role/deployer/i-1",
            "UserId": "AROAEXAMPLE:i-1"}, "ResponseMetadata": {"RequestId": "x"}}});
        assert_eq!(
            parse_caller_identity(json.to_string().as_bytes()),
            Some(want.clone())
        );
        let xml = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/deployer/i-1</Arn>
    <UserId>AROAEXAMPLE:i-1</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
</GetCallerIdentityResponse>"#;
        assert_eq!(parse_caller_identity(xml.as_bytes()), Some(want));
        let bad = serde_json::json!({"GetCallerIdentityResponse": {"GetCallerIdentityResult": {
            "Account": "12345", "Arn": "arn:aws:iam::12345:user/x", "UserId": "u"}}});
        assert_eq!(parse_caller_identity(bad.to_string().as_bytes()), None);
        assert_eq!(parse_caller_identity(b"<Error/>"), None);
    }
}
