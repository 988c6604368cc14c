//! Connecting to the auth service: TLS 1.3 with the host CA pinned by the
//! hash of its public key, and (after joining) a client certificate.
//!
//! On first contact the agent has only a pin (`sha256:<hex>` of the host CA's
//! SubjectPublicKeyInfo). The server sends its chain [leaf, host CA]; we accept
//! it only if a certificate in it matches a pin, and then verify the leaf
//! against that CA with ordinary WebPKI rules (validity, server name).
//!
//! Several auth servers of one cluster share its CAs, so the same pins
//! apply to each; the server name checked is the one configured for the
//! server actually dialled. Which server to use, and when to move to another,
//! is in `rotation` (the pure policy), `dial` (connecting) and `failover`
//! (answers that mean a server is down).

mod dial;
mod failover;
mod rotation;
mod server_addr;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tonic::transport::Channel;

use crate::identity_file::IdentityFile;
pub use dial::{Dialled, Servers};
pub use failover::AuthChannel;
pub use server_addr::{ServerAddr, parse_list};

/// The rustls crypto provider (aws-lc-rs) of the agent and of what builds
/// on it (the application tunnel, `sigil proxy`): built once, shared — it is
/// asked for on every handshake's signature check.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Trusts a server whose chain contains a CA matching one of the pins.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pins: Vec<String>,
    cache: Mutex<Option<(Vec<u8>, Arc<WebPkiServerVerifier>)>>,
}

impl PinnedCaVerifier {
    pub fn new(pins: Vec<String>) -> Self {
        PinnedCaVerifier {
            pins: pins.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
            cache: Mutex::new(None),
        }
    }

    fn verifier_for(&self, ca: &[u8]) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((der, v)) = cache.as_ref()
            && der == ca
        {
            return Ok(v.clone());
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.to_vec()))
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *cache = Some((ca.to_vec(), v.clone()));
        Ok(v)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sigil_pki::spki_pin_of_cert(c).is_ok_and(|p| self.pins.contains(&p)))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the auth service's CA does not match any configured ca_pins (wrong pin, or not a Sigil auth service)"
                        .into(),
                )
            })?;
        self.verifier_for(ca)?
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate chain and its PKCS#8 key (PEM).
pub struct ClientCert<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Build the TLS client config: pinned CA, optional client certificate.
pub fn tls_config(
    pins: &[String],
    client: Option<ClientCert<'_>>,
) -> anyhow::Result<rustls::ClientConfig> {
    if pins.is_empty() {
        bail!("no CA pin: set ca_pins (printed by `sigil bots add` and `sigil status`)");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pins.to_vec())));
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = sigil_pki::pem_to_ders(c.cert_pem, "CERTIFICATE")?
                .into_iter()
                .map(CertificateDer::from)
                .collect::<Vec<_>>();
            let key = sigil_pki::pem_to_ders(c.key_pem, "PRIVATE KEY")?
                .into_iter()
                .next()
                .context("no PRIVATE KEY block in the credential")?;
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
                .context("loading the client certificate")?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// An agent's channel: fails over between the auth servers, also when one
/// answers `Unavailable` (see `failover`).
pub fn failover_channel(servers: &Servers, tls: rustls::ClientConfig) -> AuthChannel {
    AuthChannel::new(servers, tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

/// A plain channel to `auth_server` (`HOST:PORT`, or several separated by
/// commas): connects lazily, to the first server that completes the pinned
/// handshake, and reconnects the same way.
pub fn channel(auth_server: &str, tls: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let servers = Servers::new(parse_servers("auth_server", auth_server)?)?;
    Ok(failover::plain_channel(
        &servers,
        tokio_rustls::TlsConnector::from(Arc::new(tls)),
        Default::default(),
    ))
}

/// Whether an error is a server failing rather than answering (it said
/// `Unavailable` or did not answer in time, or failed the audit witness
/// check): worth trying another server. A denial is an answer.
pub fn server_failed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if c.is::<crate::witness::WitnessRefusal>() {
            return true;
        }
        let Some(crate::StatusError(s)) = c.downcast_ref::<crate::StatusError>() else {
            return false;
        };
        if s.code() == tonic::Code::Unavailable {
            return true;
        }
        let mut source = std::error::Error::source(s);
        while let Some(x) = source {
            if x.is::<tonic::TimeoutExpired>() {
                return true;
            }
            source = x.source();
        }
        false
    })
}

/// Parse `HOST:PORT`, or several separated by commas, given as `field`.
pub fn parse_servers(field: &str, text: &str) -> anyhow::Result<Vec<ServerAddr>> {
    let entries: Vec<String> = text.split(',').map(|s| s.trim().to_string()).collect();
    server_addr::parse_list(field, &entries)
}

/// A channel for `sigil --identity FILE [--auth-server HOST:PORT[,...]]`: the
/// CA in the identity file is pinned, the certificate in it authenticates,
/// and the servers are the flag's or else the file's, tried in order.
pub async fn admin_channel(
    auth_server: Option<&str>,
    identity_file: &Path,
) -> anyhow::Result<Channel> {
    let id = IdentityFile::load(identity_file)?;
    let addrs = match auth_server {
        Some(flag) => parse_servers("--auth-server", flag)?,
        None => server_addr::parse_list("auth_servers", &id.servers())
            .with_context(|| format!("the identity file {}", identity_file.display()))?,
    };
    // Every CA in the file: both host CAs during a rotation (the service may serve
    // with either). The client CAs are pinned too but harmless: they sign only
    // clientAuth certificates, which the pinned verifier refuses for a server.
    let pins = sigil_pki::pem_to_ders(&id.ca_certs_pem, "CERTIFICATE")?
        .iter()
        .filter_map(|d| sigil_pki::spki_pin_of_cert(d).ok())
        .collect::<Vec<_>>();
    let tls = tls_config(
        &pins,
        Some(ClientCert {
            cert_pem: &id.tls_cert_pem,
            key_pem: &id.tls_key_pem,
        }),
    )?;
    Ok(failover::plain_channel(
        &Servers::new(addrs)?,
        tokio_rustls::TlsConnector::from(Arc::new(tls)),
        Default::default(),
    ))
}
