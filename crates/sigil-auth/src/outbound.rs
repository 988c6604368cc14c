//! Outbound HTTPS for join verification (OIDC discovery and JWKS, STS):
//! one client, system roots plus `--outbound-ca-file` (a self-hosted GitLab
//! or a private STS endpoint), https only, no redirects, short timeouts and
//! bounded response bodies — a slow or hostile issuer cannot hold a join.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Longest an outbound request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read.
pub const MAX_BODY: usize = 1 << 20;

/// Why an outbound call failed; never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
}

fn failed(url: &str, message: impl Into<String>) -> OutboundError {
    OutboundError::Failed {
        url: url.to_string(),
        message: message.into(),
    }
}

#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
}

impl Outbound {
    /// A client trusting the system roots plus the PEM certificates in
    /// `extra_ca_file`.
    pub fn new(extra_ca_file: Option<&Path>) -> anyhow::Result<Outbound> {
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sigil-auth/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = extra_ca_file {
            let pem = std::fs::read(p)
                .with_context(|| format!("--outbound-ca-file {}: cannot read it", p.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("--outbound-ca-file {}: not PEM certificates", p.display())
            })?;
            if certs.is_empty() {
                anyhow::bail!("--outbound-ca-file {}: no certificates in it", p.display());
            }
            b = b.tls_certs_merge(certs);
        }
        Ok(Outbound {
            client: b.build().context("building the outbound HTTPS client")?,
        })
    }

    /// The underlying client, for requests beyond a JSON GET.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GET `url` and parse a JSON body of at most [`MAX_BODY`] bytes; any
    /// status but 200 is an error.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, OutboundError> {
        let resp = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| failed(url, describe(&e)))?;
        let body = read_body(url, resp).await?;
        serde_json::from_slice(&body).map_err(|e| failed(url, format!("not JSON: {e}")))
    }
}

/// The body of a 200 response, at most [`MAX_BODY`] bytes.
pub async fn read_body(url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, OutboundError> {
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(failed(url, format!("HTTP {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(url, describe(&e)))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(failed(
                url,
                format!("response larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes (reqwest's Display alone hides them).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
