//! Join method `iam`: sign an AWS `sts:GetCallerIdentity` request that
//! carries the server's challenge, and hand it over unsent; the auth service
//! forwards it to STS to learn who we are. Credentials come from the
//! environment or the EC2 instance metadata service (IMDSv2). The secret
//! key and the signature are never logged.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sigil_proto::v1::JoinInit;

use super::{JoinProver, ProverContext};
use crate::config::Onboarding;

const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const DEFAULT_IMDS: &str = "http://169.254.169.254";
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct IamProver {
    token: String,
    endpoint: String,
    region: String,
}

impl IamProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        let token = o
            .token()?
            .filter(|t| !t.is_empty())
            .context("onboarding.token: join_method iam needs the name of the join token")?;
        let section = o.iam.clone().unwrap_or_default();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = section
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"));
        let (endpoint, region) = match (section.sts_endpoint.clone(), region) {
            (Some(e), r) => (e, r.unwrap_or_else(|| "us-east-1".into())),
            (None, Some(r)) => (format!("https://sts.{r}.amazonaws.com"), r),
            (None, None) => ("https://sts.amazonaws.com".into(), "us-east-1".into()),
        };
        let endpoint = format!("{}/", endpoint.trim_end_matches('/'));
        let url = reqwest::Url::parse(&endpoint)
            .with_context(|| format!("onboarding.iam.sts_endpoint {endpoint:?} is not a URL"))?;
        if url.scheme() != "https" || url.host_str().is_none() || url.path() != "/" {
            bail!(
                "onboarding.iam.sts_endpoint {endpoint:?} must be https://HOST[:PORT] (the auth service only forwards to HTTPS STS endpoints)"
            );
        }
        Ok(IamProver {
            token,
            endpoint,
            region,
        })
    }
}

#[async_trait::async_trait]
impl JoinProver for IamProver {
    async fn init(&self, _ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        init.token = self.token.clone();
        init.evidence.clear();
        Ok(())
    }

    async fn answer(&self, _ctx: &ProverContext, challenge: &[u8]) -> anyhow::Result<Vec<u8>> {
        let creds = aws_credentials().await?;
        let req = signed_request(
            &creds,
            &self.endpoint,
            &self.region,
            challenge,
            SystemTime::now(),
        )?;
        tracing::debug!(endpoint = %self.endpoint, region = %self.region, access_key_id = %creds.access_key_id(), "signed sts:GetCallerIdentity for the iam join");
        Ok(serde_json::to_vec(&req)?)
    }
}

/// Sign `POST {endpoint}` GetCallerIdentity with the challenge in a signed
/// header; the answer the auth service expects.
pub fn signed_request(
    creds: &Credentials,
    endpoint: &str,
    region: &str,
    challenge: &[u8],
    time: SystemTime,
) -> anyhow::Result<serde_json::Value> {
    let url = reqwest::Url::parse(endpoint).context("STS endpoint")?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => bail!("STS endpoint {endpoint:?} has no host"),
    };
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        (
            "content-type".into(),
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        ),
        ("accept".into(), "application/json".into()),
        (
            "x-sigil-challenge".into(),
            URL_SAFE_NO_PAD.encode(challenge),
        ),
    ];
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .context("SigV4 signing parameters")?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .context("building the request to sign")?;
    let (instructions, _signature) = sign(signable, &params)
        .context("SigV4-signing the GetCallerIdentity request")?
        .into_parts();
    for (k, v) in instructions.headers() {
        headers.push((k.to_ascii_lowercase(), v.to_string()));
    }
    Ok(serde_json::json!({
        "url": url.as_str(),
        "method": "POST",
        "headers": headers,
        "body": BODY,
    }))
}

/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`[/`AWS_SESSION_TOKEN`], else the
/// instance role's credentials from IMDSv2.
async fn aws_credentials() -> anyhow::Result<Credentials> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            return Ok(Credentials::new(
                id,
                secret,
                env("AWS_SESSION_TOKEN"),
                None,
                "environment",
            ));
        }
        (Some(_), None) | (None, Some(_)) => bail!(
            "join method iam: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)"
        ),
        (None, None) => {}
    }
    let base = env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| DEFAULT_IMDS.into());
    imds_credentials(base.trim_end_matches('/')).await.with_context(|| {
        format!(
            "join method iam: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run on EC2 with an instance role (instance metadata at {base} did not answer)"
        )
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImdsCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
}

async fn imds_credentials(base: &str) -> anyhow::Result<Credentials> {
    let client = reqwest::Client::builder()
        .timeout(IMDS_TIMEOUT)
        .connect_timeout(IMDS_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let ok = |r: reqwest::Response| r.error_for_status();
    let session = ok(client
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await?)?
    .text()
    .await?;
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", session.as_str())
            .send()
    };
    let roles = ok(get("/latest/meta-data/iam/security-credentials/").await?)?
        .text()
        .await?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .context("the instance has no IAM role attached")?;
    if role.contains(['/', '?', '#']) {
        bail!("instance metadata returned an invalid role name");
    }
    let c: ImdsCredentials = ok(get(&format!(
        "/latest/meta-data/iam/security-credentials/{role}"
    ))
    .await?)?
    .json()
    .await
    .context("instance metadata credentials are not JSON")?;
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        c.token,
        None,
        "imds",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_request_covers_host_and_challenge() {
        let creds = Credentials::new("AKIDTEST", "secret", Some("tok".into()), None, "t");
        let req = signed_request(
            &creds,
            "https://127.0.0.1:8443/",
            "us-east-1",
            b"abc",
            SystemTime::now(),
        )
        .unwrap();
        let headers: Vec<(String, String)> =
            serde_json::from_value(req["headers"].clone()).unwrap();
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("host"), "127.0.0.1:8443");
        assert_eq!(get("x-sigil-challenge"), "YWJj");
        assert_eq!(get("x-amz-security-token"), "tok");
        let auth = get("authorization");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token;x-sigil-challenge,"), "{auth}");
        assert_eq!(req["body"], BODY);
        assert_eq!(req["url"], "https://127.0.0.1:8443/");
    }
}
