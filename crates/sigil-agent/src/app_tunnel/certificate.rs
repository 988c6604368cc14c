//! The tunnel's certificate: a non-renewable identity certificate (what an
//! `identity` output holds, kept in memory only), issued again after each
//! renewal of the agent and before it is two-thirds through its life.
//!
//! Not the agent's own renewable credential: the proxy refuses that one the
//! moment a renewal supersedes it (a copy left behind), so a request in
//! flight at that instant would be refused and every tunnel connection cut
//! at each renewal. An identity certificate stays valid until it expires;
//! locks and the bot's current roles still apply to every request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::IssueIdentityRequest;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::client::AuthChannel as Channel;
use crate::config::app_tunnel::TunnelConfig;

/// One issued certificate and the TLS client configuration presenting it.
pub struct TunnelCert {
    pub cert_pem: String,
    pub tls: Arc<rustls::ClientConfig>,
    expires: OffsetDateTime,
}

impl TunnelCert {
    /// Whether it is past its end (never presented then: the tunnel
    /// answers 503 until a new one is issued).
    pub fn expired(&self) -> bool {
        self.expires <= OffsetDateTime::now_utc()
    }
}

/// The current certificate (`None` until the first one is issued).
pub type Current = watch::Receiver<Option<Arc<TunnelCert>>>;

/// Keep `tx` holding a valid certificate for the agent's life. A failed
/// issuance keeps the last good one and is retried with backoff.
pub async fn follow(
    cfg: Arc<TunnelConfig>,
    ttl: Duration,
    mut client: watch::Receiver<Option<AuthServiceClient<Channel>>>,
    tx: watch::Sender<Option<Arc<TunnelCert>>>,
) {
    let mut failures: u32 = 0;
    loop {
        let Some(c) = client.borrow_and_update().clone() else {
            if client.changed().await.is_err() {
                return;
            }
            continue;
        };
        let wait = match issue(&cfg, c, ttl).await {
            Ok(cert) => {
                failures = 0;
                let wait = refresh_after(cert.expires);
                tracing::debug!(app = %cfg.app, "application tunnel certificate issued");
                tx.send_replace(Some(Arc::new(cert)));
                wait
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(app = %cfg.app, error = %format!("{e:#}"),
                    "application tunnel: issuing its certificate failed; keeping the last one and retrying");
                Duration::from_secs(1u64 << failures.min(5))
            }
        };
        // A renewal of the agent (a new client) or the refresh time.
        tokio::select! {
            r = client.changed() => if r.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Two-thirds of the remaining life, at least a second.
fn refresh_after(expires: OffsetDateTime) -> Duration {
    let remaining = (expires - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    Duration::try_from(remaining * 2 / 3)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}

async fn issue(
    cfg: &TunnelConfig,
    mut client: AuthServiceClient<Channel>,
    ttl: Duration,
) -> anyhow::Result<TunnelCert> {
    // The proxy's CA first: an unreadable file costs no issuance.
    let roots = proxy_roots(cfg)?;
    let key = TlsKeyPair::generate()?;
    let resp = client
        .issue_identity(IssueIdentityRequest {
            tls_public_key_spki: key.spki_der(),
            // No SSH certificate: the tunnel speaks TLS only.
            ssh_public_key: String::new(),
            ttl_seconds: ttl.as_secs(),
        })
        .await
        .map_err(crate::status_error)
        .context("requesting the tunnel's certificate")?
        .into_inner();
    let expires = OffsetDateTime::from_unix_timestamp(resp.expires_unix)?;
    // The key's DER straight to rustls: no PEM copy of it left in memory.
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()),
    );
    let tls = client_config(roots, &resp.tls_cert_pem, key_der)?;
    Ok(TunnelCert {
        cert_pem: resp.tls_cert_pem,
        tls: Arc::new(tls),
        expires,
    })
}

/// `proxy_ca_file`, read again at each issuance (a replaced file is
/// picked up).
fn proxy_roots(cfg: &TunnelConfig) -> anyhow::Result<rustls::RootCertStore> {
    let ca = std::fs::read(&cfg.proxy_ca_file)
        .with_context(|| format!("proxy_ca_file: reading {}", cfg.proxy_ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c.context("proxy_ca_file: not PEM")?)?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "proxy_ca_file: no certificate in {}",
        cfg.proxy_ca_file.display()
    );
    Ok(roots)
}

/// Trusts the proxy's CA and presents the certificate.
fn client_config(
    roots: rustls::RootCertStore,
    cert_pem: &str,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the tunnel's certificate")?;
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::client::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?,
    )
}

#[cfg(test)]
mod tests {
    use super::refresh_after;
    use std::time::Duration;
    use time::OffsetDateTime;

    #[test]
    fn refreshed_two_thirds_through_its_remaining_life() {
        let w = refresh_after(OffsetDateTime::now_utc() + time::Duration::minutes(60));
        assert!(
            w > Duration::from_secs(39 * 60) && w <= Duration::from_secs(40 * 60),
            "{w:?}"
        );
        let past = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        assert_eq!(refresh_after(past), Duration::from_secs(1));
    }
}
