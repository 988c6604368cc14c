//! TLS for the control plane: the auth service's server certificate (issued by
//! the `host` CA at start-up) and client-certificate verification against the
//! `client` CA. Clients without a certificate may connect (to `Ping`/`Join`);
//! every other call checks the verified identity per request.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sigil_pki::{CertInfo, ClientIdentity, TlsKeyPair, X509Ca};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// How long the auth service's own TLS certificate lives; it is issued at
/// every start and replaced every [`SERVER_CERT_REFRESH`].
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const SERVER_CERT_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// The process-wide crypto provider: aws-lc-rs, installed explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Names the server certificate carries: the configured names, `localhost`,
/// the cluster name and the concrete IPs it listens on.
pub fn server_names(
    cluster: &str,
    configured: &[String],
    listens: &[SocketAddr],
) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_string(), cluster.to_string()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    for name in configured {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    for l in listens {
        if !l.ip().is_unspecified() {
            ips.push(l.ip());
        }
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

/// The auth service's own TLS certificate, issued by the host CA and
/// replaced in place before it expires (connections pick the current one at
/// handshake time).
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    common_name: String,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl ServerCert {
    pub fn issue(
        host_ca: &X509Ca,
        cluster: &str,
        dns: &[String],
        ips: &[IpAddr],
    ) -> anyhow::Result<ServerCert> {
        let common_name = format!("{cluster} auth");
        let ck = certified_key(host_ca, &common_name, dns, ips)?;
        Ok(ServerCert {
            current: std::sync::RwLock::new(Arc::new(ck)),
            common_name,
            dns: dns.to_vec(),
            ips: ips.to_vec(),
        })
    }

    /// Issue a fresh certificate and key and start serving them.
    pub fn refresh(&self, host_ca: &X509Ca) -> anyhow::Result<()> {
        let ck = self.prepare(host_ca)?;
        self.install(ck);
        Ok(())
    }

    /// A fresh certificate and key from `host_ca`, not served yet.
    pub fn prepare(&self, host_ca: &X509Ca) -> anyhow::Result<rustls::sign::CertifiedKey> {
        certified_key(host_ca, &self.common_name, &self.dns, &self.ips)
    }

    /// Serve `ck` from the next handshake on.
    pub fn install(&self, ck: rustls::sign::CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn certified_key(
    host_ca: &X509Ca,
    common_name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> anyhow::Result<rustls::sign::CertifiedKey> {
    let key = TlsKeyPair::generate().context("generating the auth service TLS key")?;
    // Never past the CA's own end (an imported intermediate may end sooner); the
    // daily refresh keeps a fresh one in place meanwhile.
    let left = (host_ca.not_after() - time::OffsetDateTime::now_utc() - time::Duration::minutes(1))
        .try_into()
        .unwrap_or(Duration::ZERO);
    let ttl = SERVER_CERT_TTL.min(left);
    let leaf = host_ca
        .issue_server(&key.spki_der(), common_name, dns, ips, ttl)
        .context("issuing the auth service TLS certificate")?;
    // The leaf, the CA, and any intermediates above an imported CA.
    let mut chain = vec![CertificateDer::from(leaf.der.clone())];
    chain.extend(
        host_ca
            .chain_ders()
            .iter()
            .map(|d| CertificateDer::from(d.clone())),
    );
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signer = provider()
        .key_provider
        .load_private_key(key_der)
        .context("loading the auth service TLS key")?;
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

/// Build the rustls server config for a listener, optionally asking for
/// client certificates and checking them with `client_verifier`.
pub fn server_config(
    cert: Arc<ServerCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with aws-lc-rs")?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption cannot carry a renewed client certificate, so tickets would
    // only cost a write and an encryption per handshake.
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Verifies client certificates against the client CAs trusted now: one outside a
/// rotation, both during one. Clients without a certificate may connect (to
/// `Ping`/`Join`); every other call checks the identity per request.
#[derive(Debug)]
pub struct ClientRoots {
    current: std::sync::RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ClientRoots {
    pub fn new(cas: &[Arc<X509Ca>]) -> anyhow::Result<ClientRoots> {
        Ok(ClientRoots {
            current: std::sync::RwLock::new(verifier(cas)?),
        })
    }

    /// A verifier trusting exactly `cas`, not in use yet.
    pub fn prepare(cas: &[Arc<X509Ca>]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
        verifier(cas)
    }

    /// Use `v` from the next handshake on.
    pub fn install(&self, v: Arc<dyn ClientCertVerifier>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = v;
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn verifier(cas: &[Arc<X509Ca>]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .context("adding a client CA to the trust store")?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")
}

impl ClientCertVerifier for ClientRoots {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    // No hints: they would have to outlive a swap of the roots, and Sigil's
    // clients send their one certificate regardless.
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// What a request knows about its connection: the peer address and, when the
/// client presented a valid certificate, its parsed identity (parsed once per
/// connection, not per request).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    pub identity: Option<Arc<(ClientIdentity, CertInfo)>>,
    /// Set when the client showed a certificate that is not a Sigil identity.
    pub identity_error: Option<String>,
    /// True for the owner-only admin Unix socket.
    pub local_admin: bool,
    /// The TLS key-exchange group of this connection (`None`: the admin socket).
    pub key_exchange: Option<String>,
    /// SPKI pin of the trusted client CA whose key verified the client certificate
    /// at the handshake (checked against the trusted set again on every call: a
    /// connection can outlive a rotation that drops its CA).
    pub client_ca_pin: Option<String>,
    /// Why every call on this connection is refused (an admin socket peer
    /// of another uid), before anything else is looked at.
    pub refused: Option<String>,
}

/// The transport under TLS: writes are buffered so the TLS records of one
/// HTTP/2 flush (headers, data, trailers) leave in one syscall.
pub type BufferedTcp = tokio::io::BufWriter<TcpStream>;

/// Write buffer per connection: one typical response fits.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// A TLS connection carrying its [`PeerInfo`] for tonic.
pub struct TlsConn {
    inner: TlsStream<BufferedTcp>,
    info: PeerInfo,
}

impl TlsConn {
    pub fn new(
        inner: TlsStream<BufferedTcp>,
        remote: SocketAddr,
        client_ca_pin: Option<String>,
    ) -> Self {
        let (_, conn) = inner.get_ref();
        let mut info = PeerInfo {
            remote_addr: Some(remote),
            identity: None,
            identity_error: None,
            local_admin: false,
            key_exchange: Some(crate::key_exchange::group_of(conn)),
            client_ca_pin,
            refused: None,
        };
        if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
            match sigil_pki::read_client_identity(leaf) {
                Ok(id) => info.identity = Some(Arc::new(id)),
                Err(e) => info.identity_error = Some(e.to_string()),
            }
        }
        TlsConn { inner, info }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A Unix-socket connection for the local admin API. The socket is 0600 in
/// the 0700 data dir, and on top of those modes the peer's uid (SO_PEERCRED,
/// which the peer cannot forge) must be the server's own: the data dir's
/// owner. Root is refused too: it can become that user (`runuser -u OWNER`),
/// and one rule is easier to audit than an exception.
pub struct AdminConn {
    io: tokio::net::UnixStream,
    refused: Option<String>,
}

impl AdminConn {
    pub fn new(io: tokio::net::UnixStream) -> AdminConn {
        // SAFETY: geteuid has no arguments and cannot fail.
        let me = unsafe { libc::geteuid() };
        let refused = match io.peer_cred() {
            Ok(c) if c.uid() == me => None,
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    pid = ?c.pid(),
                    "admin socket: refusing a connection from another user"
                );
                Some(format!(
                    "uid {} may not use the admin socket: only uid {me}, the owner of the data dir \
                     running the auth service, may; run the command as that user, or use \
                     --auth-server with an admin identity",
                    c.uid()
                ))
            }
            Err(e) => Some(format!("the admin socket could not identify its peer: {e}")),
        };
        AdminConn { io, refused }
    }
}

impl Connected for AdminConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            identity: None,
            identity_error: None,
            local_admin: self.refused.is_none(),
            key_exchange: None,
            client_ca_pin: None,
            refused: self.refused.clone(),
        }
    }
}

impl AsyncRead for AdminConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdminConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
