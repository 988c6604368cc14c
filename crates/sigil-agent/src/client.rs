//! Connecting to the auth service: TLS 1.3 with the host CA pinned by the
//! hash of its public key, and (after joining) a client certificate.
//!
//! On first contact the agent has only a pin (`sha256:<hex>` of the host CA's
//! SubjectPublicKeyInfo). The server sends its chain [leaf, host CA]; we accept
//! it only if a certificate in it matches a pin, and then verify the leaf
//! against that CA with ordinary WebPKI rules (validity, server name).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint};

use crate::identity_file::IdentityFile;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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

/// Split "HOST:PORT" into the TLS server name and the address to dial.
fn split_addr(auth_server: &str) -> anyhow::Result<(String, String)> {
    let s = auth_server.trim().trim_start_matches("https://");
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("auth_server {auth_server:?} must be HOST:PORT"))?;
    port.parse::<u16>()
        .with_context(|| format!("auth_server {auth_server:?} has an invalid port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, s.to_string()))
}

/// Open a gRPC channel to the auth service over our TLS config. The channel
/// connects lazily and reconnects; every connection is pinned the same way.
pub fn channel(auth_server: &str, tls: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let (host, addr) = split_addr(auth_server)?;
    let name = ServerName::try_from(host.clone())
        .with_context(|| format!("auth_server host {host:?} is not a valid DNS name or IP"))?
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("auth_server {auth_server:?} is not a valid address"))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let name = name.clone();
            let addr = addr.clone();
            async move {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&addr).await?.collect();
                let mut last = std::io::Error::other(format!("{addr} resolved to no address"));
                for a in addrs {
                    match tokio::net::TcpStream::connect(a).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            // Buffer writes so one HTTP/2 flush is one syscall.
                            let tcp = tokio::io::BufWriter::with_capacity(8 * 1024, tcp);
                            let tls = connector.connect(name, tcp).await?;
                            return Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        })),
    )
}

/// A channel for `sigil --auth-server HOST:PORT --identity FILE`: the CA in the
/// identity file is pinned, the certificate in it authenticates.
pub async fn admin_channel(auth_server: &str, identity_file: &Path) -> anyhow::Result<Channel> {
    let id = IdentityFile::load(identity_file)?;
    let pins = sigil_pki::pem_to_ders(&id.ca_certs_pem, "CERTIFICATE")?
        .iter()
        .take(1) // the host CA comes first; the client CA never signs servers
        .filter_map(|d| sigil_pki::spki_pin_of_cert(d).ok())
        .collect::<Vec<_>>();
    let tls = tls_config(
        &pins,
        Some(ClientCert {
            cert_pem: &id.tls_cert_pem,
            key_pem: &id.tls_key_pem,
        }),
    )?;
    channel(auth_server, tls)
}
