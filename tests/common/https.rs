//! A local HTTPS server for test fixtures that stand in for a platform (an
//! OIDC issuer with discovery and JWKS, an STS endpoint). It has its own CA,
//! written to `ca_pem` for `sigil auth start --outbound-ca-file`, and a
//! certificate for 127.0.0.1 and localhost. Requests go to a handler
//! closure; every request is kept for assertions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// A request as the fixture saw it.
#[derive(Clone, Debug)]
pub struct FixtureRequest {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string ("" when none).
    pub query: String,
    /// Lower-case header names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// What the handler answers.
#[derive(Clone, Debug)]
pub struct FixtureResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl FixtureResponse {
    pub fn json(v: &serde_json::Value) -> Self {
        FixtureResponse {
            status: 200,
            content_type: "application/json".into(),
            body: v.to_string().into_bytes(),
        }
    }

    pub fn status(status: u16, body: &str) -> Self {
        FixtureResponse {
            status,
            content_type: "text/plain".into(),
            body: body.as_bytes().to_vec(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&FixtureRequest) -> FixtureResponse + Send + Sync>;

pub struct HttpsFixture {
    pub port: u16,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// PEM of the fixture's CA (for --outbound-ca-file).
    pub ca_pem: PathBuf,
    pub requests: Arc<Mutex<Vec<FixtureRequest>>>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsFixture {
    pub fn start(handler: Handler) -> HttpsFixture {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        // A CA and a leaf signed by it, so the auth service trusts the CA
        // file and checks the host name like it would for a real issuer.
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sigil test fixture CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("leaf params");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        let ca_pem = dir.path().join("fixture-ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem()).expect("write ca");

        let certs = vec![leaf.der().clone(), ca_cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let reqs = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
                    let handler = handler.clone();
                    let reqs = reqs.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |req| {
                            let handler = handler.clone();
                            let reqs = reqs.clone();
                            async move {
                                let r = to_fixture_request(req).await;
                                let resp = handler(&r);
                                reqs.lock().expect("requests").push(r);
                                hyper::Response::builder()
                                    .status(resp.status)
                                    .header("content-type", resp.content_type)
                                    .body(Full::new(Bytes::from(resp.body)))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        HttpsFixture {
            port,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem,
            requests,
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Requests seen so far whose path is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<FixtureRequest> {
        self.requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn to_fixture_request(req: hyper::Request<hyper::body::Incoming>) -> FixtureRequest {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut headers = BTreeMap::<String, String>::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    FixtureRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body,
    }
}

impl Drop for HttpsFixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
