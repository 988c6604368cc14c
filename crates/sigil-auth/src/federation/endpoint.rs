//! Our own bundle endpoint in the `https_spiffe` profile (SPIFFE Federation
//! §5.2): the bundle document on every path, over TLS with an X.509-SVID of
//! our trust domain (`spiffe://<td>/spiffe/bundle-endpoint`) issued by the
//! spiffe CA and renewed at half its life, so a peer (another Sigil, SPIRE)
//! that knows our bundle can authenticate the endpoint. The `https_web`
//! profile stays on the public listener (`/.well-known/spiffe-bundle`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sigil_pki::TlsKeyPair;
use sigil_proto::deadline::{Deadlines, ReadDeadline};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::SharedState;

/// The path of the endpoint's SPIFFE ID in our trust domain.
pub const ENDPOINT_ID_PATH: &str = "/spiffe/bundle-endpoint";
/// Lifetime of the endpoint's SVID; renewed at half of it.
const SVID_TTL: Duration = Duration::from_secs(3600);
/// As on the public listener: the ClientHello's record header within the
/// handshake timeout, then never silent for the idle timeout.
const DEADLINES: Deadlines = Deadlines {
    first: crate::public_http::TLS_HANDSHAKE_TIMEOUT,
    first_bytes: 5,
    idle: crate::public_http::IDLE_TIMEOUT,
};

/// The endpoint's SVID, replaced in place on renewal and CA rotation.
#[derive(Debug)]
struct EndpointCert {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for EndpointCert {
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

/// The endpoint's SPIFFE ID.
pub fn endpoint_spiffe_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}{ENDPOINT_ID_PATH}")
}

fn issue(state: &SharedState) -> anyhow::Result<rustls::sign::CertifiedKey> {
    let key = TlsKeyPair::generate().context("generating the bundle endpoint key")?;
    let cas = state.cas();
    let ca = &cas.spiffe.signer;
    let svid = ca
        .issue_x509_svid(
            &key.spki_der(),
            &endpoint_spiffe_id(&state.cluster),
            &[],
            SVID_TTL,
        )
        .context("issuing the bundle endpoint's X.509-SVID")?;
    let mut chain = vec![CertificateDer::from(svid.der)];
    if ca.is_intermediate() {
        chain.extend(
            ca.chain_ders()
                .iter()
                .map(|d| CertificateDer::from(d.clone())),
        );
    }
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .context("loading the bundle endpoint key")?;
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

/// Serve the `https_spiffe` bundle endpoint on `listener` until `stop`.
pub async fn serve_bundle_endpoint(
    listener: TcpListener,
    state: SharedState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cert = Arc::new(EndpointCert {
        current: RwLock::new(Arc::new(issue(&state)?)),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // Renew at half-life, and at once when the spiffe CA changes (rotation).
    let renew = {
        let (state, cert) = (state.clone(), cert.clone());
        tokio::spawn(async move {
            let mut epoch = state.ca_epoch.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SVID_TTL / 2) => {}
                    r = epoch.changed() => if r.is_err() { return },
                }
                match issue(&state) {
                    Ok(ck) => {
                        *cert.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck)
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "renewing the bundle endpoint SVID failed")
                    }
                }
            }
        })
    };
    let app = axum::Router::new()
        .fallback(axum::routing::get(bundle))
        .with_state(state.clone());
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = crate::wait(stop.clone()) => break,
        };
        let (acceptor, app, http) = (acceptor.clone(), app.clone(), http.clone());
        tokio::spawn(async move {
            let tcp = ReadDeadline::new(tcp, DEADLINES);
            let Ok(Ok(tls)) = tokio::time::timeout(
                crate::public_http::TLS_HANDSHAKE_TIMEOUT,
                acceptor.accept(tcp),
            )
            .await
            else {
                return;
            };
            let svc = TowerToHyperService::new(app);
            let _ = tokio::time::timeout(
                crate::public_http::IDLE_TIMEOUT,
                http.serve_connection(TokioIo::new(tls), svc),
            )
            .await;
        });
    }
    renew.abort();
    Ok(())
}

async fn bundle(
    axum::extract::State(state): axum::extract::State<SharedState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::own_bundle_document(&state),
    )
}
