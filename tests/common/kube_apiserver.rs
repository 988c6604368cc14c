//! A stand-in for kube-apiserver's x509 client authentication, for kubectl.
//!
//! Like the real API server (`--client-ca-file`): the TLS handshake asks for
//! a client certificate but takes any (Go's `tls.RequestClientCert`); the
//! authenticator then verifies the chain against the client-CA file, with
//! EKU clientAuth and validity, and reads the subject's CommonName as the
//! user and every Organization as a group (plus `system:authenticated`).
//! An unauthenticated request gets 401 with a `Status` body, as kubectl
//! expects. It answers `GET /version` and `POST
//! /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl auth whoami`).
//! Its own serving certificate comes from a CA of its own (`ca_pem`, what a
//! `kubernetes_cluster`'s `spec.ca_file_pem` holds).

use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

/// Who a request was authenticated as (`None`: refused with 401).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub user: Option<(String, Vec<String>)>,
    /// Why authentication failed, if it did.
    pub error: Option<String>,
}

pub struct KubeApiServer {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// PEM of the CA that signed the serving certificate.
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Accepts any client certificate at the handshake (checking only that the
/// client holds its key); the chain is the authenticator's business.
#[derive(Debug)]
struct RequestClientCert(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for RequestClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The x509 authenticator: the chain against the client CAs, then CN and O.
fn authenticate(
    verifier: &dyn ClientCertVerifier,
    chain: Option<&[CertificateDer<'static>]>,
) -> Result<(String, Vec<String>), String> {
    let chain = chain
        .filter(|c| !c.is_empty())
        .ok_or("no client certificate")?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| format!("verifying certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| format!("parsing certificate: {e}"))?;
    let user = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    if user.is_empty() {
        return Err("no CommonName".into());
    }
    let mut groups: Vec<String> = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Ok((user, groups))
}

fn status(code: u16, reason: &str, message: &str) -> (u16, serde_json::Value) {
    (
        code,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn answer(
    method: &str,
    path: &str,
    user: &Result<(String, Vec<String>), String>,
) -> (u16, serde_json::Value) {
    let Ok((name, groups)) = user else {
        return status(401, "Unauthorized", "Unauthorized");
    };
    match (method, path) {
        ("GET", "/version") => (
            200,
            serde_json::json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-sigil-standin",
                "gitCommit": "0000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews") => (
            201,
            serde_json::json!({
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": name, "groups": groups}},
            }),
        ),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

impl KubeApiServer {
    /// Serve, trusting client certificates of the CAs in `client_ca_pem`.
    pub fn start(client_ca_pem: &str) -> KubeApiServer {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in sigil_pki::pem_to_ders(client_ca_pem, "CERTIFICATE").expect("client CA PEM") {
            roots.add(CertificateDer::from(der)).expect("client CA");
        }
        let authenticator = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");

        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver stand-in CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("leaf params")
                .signed_by(&leaf_key, &issuer)
                .expect("leaf");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(Arc::new(RequestClientCert(provider)))
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let log = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                        _ = &mut stop_rx => return,
                    };
                    let acceptor = acceptor.clone();
                    let authenticator = authenticator.clone();
                    let log = log.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let user = Arc::new(authenticate(
                            authenticator.as_ref(),
                            tls.get_ref().1.peer_certificates(),
                        ));
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let user = user.clone();
                                let log = log.clone();
                                async move {
                                    let (method, path) =
                                        (req.method().to_string(), req.uri().path().to_string());
                                    let (code, body) = answer(&method, &path, &user);
                                    log.lock().expect("seen").push(Seen {
                                        method,
                                        path,
                                        user: user.as_ref().as_ref().ok().cloned(),
                                        error: user.as_ref().as_ref().err().cloned(),
                                    });
                                    hyper::Response::builder()
                                        .status(code)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body.to_string())))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        KubeApiServer {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca_cert.pem(),
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
