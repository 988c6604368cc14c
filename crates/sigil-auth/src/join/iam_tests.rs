//! Unit tests of the iam join checks (split out to keep iam.rs short).
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

    // A second SignedHeaders list (STS might read the other one).
    let mut v = signed(FIXTURE, &c);
    let auth = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "authorization")
        .unwrap()[1]
        .as_str()
        .unwrap()
        .to_string();
    set_header(
        &mut v,
        "authorization",
        &format!("{auth}, SignedHeaders=host"),
    );
    assert!(reason(check(&v, &c)).contains("exactly Credential"));

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
