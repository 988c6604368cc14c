//! An STS stand-in for `iam` joins: knows some access keys and, like AWS,
//! answers `GetCallerIdentity` only for a request whose SigV4 signature it
//! can recompute with the key's secret (over the signed headers it
//! received, at the signed time) and whose `x-amz-date` is recent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use super::https::{FixtureRequest, FixtureResponse, HttpsFixture};

pub const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// An access key STS knows, and whose it is.
#[derive(Clone, Debug)]
pub struct StsKey {
    pub access_key_id: &'static str,
    pub secret: &'static str,
    pub account: &'static str,
    pub arn: &'static str,
    pub user_id: &'static str,
}

/// Start an STS fixture knowing `keys`.
pub fn start(keys: &[StsKey]) -> HttpsFixture {
    let keys: BTreeMap<String, StsKey> = keys
        .iter()
        .map(|k| (k.access_key_id.to_string(), k.clone()))
        .collect();
    HttpsFixture::start(Arc::new(move |req: &FixtureRequest| answer(&keys, req)))
}

fn error(status: u16, code: &str) -> FixtureResponse {
    let body = serde_json::json!({"Error": {"Code": code, "Type": "Sender"}});
    FixtureResponse {
        status,
        content_type: "application/json".into(),
        body: body.to_string().into_bytes(),
    }
}

fn answer(keys: &BTreeMap<String, StsKey>, req: &FixtureRequest) -> FixtureResponse {
    if req.method != "POST" || req.path != "/" || !req.query.is_empty() {
        return error(400, "InvalidAction");
    }
    if req.body != BODY.as_bytes() {
        return error(400, "InvalidAction");
    }
    let header = |k: &str| req.headers.get(k).map(String::as_str);
    let Some(auth) = header("authorization") else {
        return error(403, "MissingAuthenticationToken");
    };
    let Some(parsed) = parse_authorization(auth) else {
        return error(403, "IncompleteSignature");
    };
    let Some(key) = keys.get(&parsed.access_key_id) else {
        return error(403, "InvalidClientTokenId");
    };
    let Some(time) = header("x-amz-date").and_then(parse_amz_date) else {
        return error(403, "IncompleteSignature");
    };
    let skew = SystemTime::now()
        .duration_since(time)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > Duration::from_secs(300) {
        return error(403, "SignatureDoesNotMatch");
    }
    // Recompute over exactly the headers the client said it signed.
    let mut signed = Vec::new();
    for name in &parsed.signed_headers {
        match header(name) {
            Some(v) => signed.push((name.clone(), v.to_string())),
            None => return error(403, "SignatureDoesNotMatch"),
        }
    }
    let Some(host) = header("host") else {
        return error(400, "MissingHost");
    };
    let creds = Credentials::new(
        key.access_key_id,
        key.secret,
        header("x-amz-security-token").map(str::to_string),
        None,
        "sts-fixture",
    );
    let expected = recompute(
        &creds,
        &parsed.region,
        &format!("https://{host}/"),
        &signed,
        time,
    );
    if expected.as_deref() != Some(auth) {
        return error(403, "SignatureDoesNotMatch");
    }
    if header("accept").is_some_and(|a| a.contains("json")) {
        FixtureResponse::json(&serde_json::json!({
            "GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {
                    "Account": key.account, "Arn": key.arn, "UserId": key.user_id,
                },
                "ResponseMetadata": {"RequestId": "00000000-0000-0000-0000-000000000000"},
            }
        }))
    } else {
        FixtureResponse {
            status: 200,
            content_type: "text/xml".into(),
            body: format!(
                "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult></GetCallerIdentityResponse>",
                key.arn, key.user_id, key.account
            )
            .into_bytes(),
        }
    }
}

struct Authorization {
    access_key_id: String,
    region: String,
    signed_headers: Vec<String>,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/sts/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`
fn parse_authorization(auth: &str) -> Option<Authorization> {
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut cred = None;
    let mut signed = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(c) = part.strip_prefix("Credential=") {
            cred = Some(c);
        } else if let Some(s) = part.strip_prefix("SignedHeaders=") {
            signed = Some(s);
        }
    }
    let scope: Vec<&str> = cred?.split('/').collect();
    if scope.len() != 5 || scope[3] != "sts" || scope[4] != "aws4_request" {
        return None;
    }
    Some(Authorization {
        access_key_id: scope[0].to_string(),
        region: scope[2].to_string(),
        signed_headers: signed?.split(';').map(str::to_string).collect(),
    })
}

fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(s, &fmt).ok()?.assume_utc();
    Some(SystemTime::from(t))
}

/// The `authorization` header a client holding `creds` would have sent.
fn recompute(
    creds: &Credentials,
    region: &str,
    url: &str,
    headers: &[(String, String)],
    time: SystemTime,
) -> Option<String> {
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .ok()?;
    let (instructions, _) = sign(signable, &params).ok()?.into_parts();
    instructions
        .headers()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string())
}
