//! The proxy's TLS: its server certificate, and client certificates
//! REQUIRED, verified against the cluster's client CAs (from the auth
//! service; rebuilt when they change, e.g. a rotation).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The server certificate chain and key, read once at start.
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<ServerIdentity> {
        let cert_pem = std::fs::read(cert_file)
            .with_context(|| format!("tls_cert_file: reading {}", cert_file.display()))?;
        let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("tls_cert_file: {} is not PEM", cert_file.display()))?;
        if chain.is_empty() {
            bail!(
                "tls_cert_file: {} holds no certificate",
                cert_file.display()
            );
        }
        let key_pem = std::fs::read(key_file)
            .with_context(|| format!("tls_key_file: reading {}", key_file.display()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .ok()
            .flatten()
            .with_context(|| {
                format!(
                    "tls_key_file: {} holds no PEM private key",
                    key_file.display()
                )
            })?;
        Ok(ServerIdentity { chain, key })
    }

    /// A server config requiring a client certificate from `client_ca_pem`.
    pub fn config(&self, client_ca_pem: &str) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = sigil_agent::client::provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut client_ca_pem.as_bytes()) {
            roots
                .add(c.context("client CA PEM from the auth service")?)
                .context("client CA from the auth service")?;
        }
        if roots.is_empty() {
            bail!("no client CA yet (the proxy has not heard from the auth service)");
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("client certificate verifier")?;
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("tls_cert_file/tls_key_file: the key does not match the certificate")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
