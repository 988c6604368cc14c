//! Join method `github`: ask the GitHub Actions runtime for an ID token with
//! the cluster name as audience (`ACTIONS_ID_TOKEN_REQUEST_URL`, authorised
//! by `ACTIONS_ID_TOKEN_REQUEST_TOKEN`; both present only when the workflow
//! has `permissions: id-token: write`). A fresh token at every join: they
//! live minutes and delegated methods re-prove at every renewal.

use std::time::Duration;

use anyhow::{Context, bail};
use sigil_proto::v1::JoinInit;

use super::oidc::{MAX_JWT_LEN, jwt_bytes, process_env, token_name};
use super::{JoinProver, ProverContext};
use crate::config::Onboarding;

pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct GithubProver {
    token: String,
}

impl GithubProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        Ok(GithubProver {
            token: token_name(o)?,
        })
    }
}

/// The runtime's URL with `audience` added to its query.
fn request_url(base: &str, audience: &str) -> anyhow::Result<reqwest::Url> {
    let mut url =
        reqwest::Url::parse(base).with_context(|| format!("{REQUEST_URL_VAR} is not a URL"))?;
    url.query_pairs_mut().append_pair("audience", audience);
    Ok(url)
}

/// Fetch an ID token for `audience`; `env` looks the runtime variables up.
async fn fetch(audience: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<u8>> {
    let (Some(base), Some(bearer)) = (
        env(REQUEST_URL_VAR).filter(|v| !v.is_empty()),
        env(REQUEST_TOKEN_VAR).filter(|v| !v.is_empty()),
    ) else {
        bail!(
            "{REQUEST_URL_VAR} and {REQUEST_TOKEN_VAR} are not set: run inside GitHub Actions with `permissions: id-token: write`"
        );
    };
    let url = request_url(&base, audience)?;
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTPS client")?;
    // Errors say where, never the request token (it is only in the header).
    let mut resp = client
        .get(url)
        .header("authorization", format!("bearer {bearer}"))
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "requesting an ID token from the GitHub Actions runtime ({REQUEST_URL_VAR}): {}",
                e.without_url()
            )
        })?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "the GitHub Actions runtime answered {status} to the ID token request: check `permissions: id-token: write`"
        );
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        anyhow::anyhow!(
            "reading the GitHub Actions runtime's answer: {}",
            e.without_url()
        )
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > 2 * MAX_JWT_LEN {
            bail!("the GitHub Actions runtime's answer is too large");
        }
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("the GitHub Actions runtime's answer is not JSON")?;
    let jwt = v
        .get("value")
        .and_then(serde_json::Value::as_str)
        .context("the GitHub Actions runtime's answer has no \"value\"")?;
    jwt_bytes(jwt, "the GitHub Actions runtime's ID token")
}

#[async_trait::async_trait]
impl JoinProver for GithubProver {
    async fn init(&self, ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        init.token = self.token.clone();
        init.evidence = fetch(&ctx.cluster, process_env).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::oidc::tests::JWT;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn audience_is_added_to_the_existing_query() {
        let u = request_url(
            "https://runtime.test/idtoken?api-version=2.0",
            "a b&c=d.test",
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://runtime.test/idtoken?api-version=2.0&audience=a+b%26c%3Dd.test"
        );
        assert!(request_url("not a url", "x").is_err());
    }

    #[tokio::test]
    async fn missing_runtime_variables_say_what_to_do() {
        let e = fetch("x", |_| None).await.unwrap_err().to_string();
        assert!(e.contains("permissions: id-token: write"), "{e}");
        let e = fetch("x", |k| (k == REQUEST_URL_VAR).then(|| "http://h/".into()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(REQUEST_TOKEN_VAR), "{e}");
    }

    /// One HTTP exchange on a local socket: returns the request head.
    async fn serve_once(status: &str, body: String) -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/idtoken?api-version=2.0", l.local_addr().unwrap());
        let status = status.to_string();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap();
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (url, h)
    }

    #[tokio::test]
    async fn asks_the_runtime_with_audience_and_bearer() {
        let (url, h) = serve_once("200 OK", format!("{{\"value\":\"{JWT}\"}}")).await;
        let env = move |k: &str| match k {
            REQUEST_URL_VAR => Some(url.clone()),
            REQUEST_TOKEN_VAR => Some("req-secret".into()),
            _ => None,
        };
        assert_eq!(fetch("example.test", &env).await.unwrap(), JWT.as_bytes());
        let head = h.await.unwrap();
        assert!(
            head.starts_with("GET /idtoken?api-version=2.0&audience=example.test "),
            "{head}"
        );
        assert!(head.contains("authorization: bearer req-secret"), "{head}");

        let (url, _h) = serve_once("403 Forbidden", "{}".into()).await;
        let env = move |k: &str| match k {
            REQUEST_URL_VAR => Some(url.clone()),
            REQUEST_TOKEN_VAR => Some("req-secret".into()),
            _ => None,
        };
        let e = fetch("example.test", &env).await.unwrap_err().to_string();
        assert!(e.contains("403") && !e.contains("req-secret"), "{e}");
    }
}
