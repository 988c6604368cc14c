//! Public HTTPS (no client certificate, unless the console's certificate
//! login is on: web/client_cert.rs): health, readiness, Prometheus
//! metrics, the SPIFFE bundle endpoint (`https_web` profile) and OIDC
//! discovery + JWKS, so cloud providers can trust JWT-SVIDs by federation.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use sigil_proto::deadline::{Deadlines, ReadDeadline};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::SharedState;

/// A TLS handshake must finish within this time of accepting.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 request's headers must arrive within this time (this also
/// closes a keep-alive connection that sends no next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that reads nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 pings this often, and gives up on an unanswered one after the same.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// The bounds on the raw connection: the TLS ClientHello's record header
/// within the handshake timeout, then never silent for [`IDLE_TIMEOUT`].
const DEADLINES: Deadlines = Deadlines {
    first: TLS_HANDSHAKE_TIMEOUT,
    first_bytes: 5,
    idle: IDLE_TIMEOUT,
};

#[derive(Clone)]
struct Http {
    state: SharedState,
    metrics: Option<PrometheusHandle>,
}

pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: SharedState,
    metrics: Option<PrometheusHandle>,
    stop: watch::Receiver<bool>,
) {
    let key_exchanges = state.key_exchanges.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/.well-known/spiffe-bundle", get(spiffe_bundle))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/jwks.json", get(jwks))
        .with_state(Http {
            state: state.clone(),
            metrics,
        })
        .merge(crate::web::router(state.clone()));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(H2_KEEPALIVE)
        .max_concurrent_streams(64);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = crate::wait(stop.clone()) => return,
        };
        let acceptor = acceptor.clone();
        // The peer's address, for the web console's audit events.
        let app = app
            .clone()
            .layer(axum::Extension(crate::web::RemoteAddr(remote)));
        let http = http.clone();
        let key_exchanges = key_exchanges.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tcp = ReadDeadline::new(tcp, DEADLINES);
            let Ok(Ok(tls)) =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            key_exchanges.record("public", &crate::key_exchange::group_of(tls.get_ref().1));
            // The client certificate, if asked for and sent, verified once.
            let cert = crate::web::client_cert::inspect(&state, tls.get_ref().1);
            let app = app.layer(axum::Extension(crate::web::client_cert::ConnCert(
                Arc::new(cert),
            )));
            let svc = TowerToHyperService::new(app);
            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}

type Json = ([(axum::http::HeaderName, &'static str); 2], String);

fn json(body: String) -> Json {
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            // Relying parties poll these; a short cache keeps rotations quick.
            (axum::http::header::CACHE_CONTROL, "max-age=60"),
        ],
        body,
    )
}

async fn spiffe_bundle(State(h): State<Http>) -> Json {
    json(crate::federation::own_bundle_document(&h.state))
}

async fn jwks(State(h): State<Http>) -> Json {
    json(h.state.trust.current().jwks_json.clone())
}

async fn openid_configuration(State(h): State<Http>) -> Json {
    let issuer = &h.state.jwt_issuer;
    json(
        serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks.json"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss"],
        })
        .to_string(),
    )
}

async fn readyz(State(h): State<Http>) -> (StatusCode, String) {
    // A shared store's change feed down or behind: this server's view of locks may be
    // stale, so it takes itself out of rotation until it has caught up.
    if let Err(why) = h.state.store.health() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {why}\n"));
    }
    if let Err(why) = h.state.store.writable() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {why}\n"));
    }
    // The cluster moved to CAs this server could not load: it would sign with old ones.
    // The reason (store or HSM details) goes to the log, not to anonymous callers.
    if h.state.cas_stale().is_some() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "CAs: reload failed (the reason is in the auth service's log)\n".into(),
        );
    }
    match h.state.store.get(crate::keys::CLUSTER).await {
        // A broken audit log is reported, not made unready: the service keeps
        // serving (and stops signing checkpoints) while an operator investigates.
        Ok(Some(_)) => match h.state.checkpoints.integrity() {
            crate::audit::checkpoint::Integrity::Broken { seq, reason } => (
                StatusCode::OK,
                format!("ready\nwarning: audit log integrity failure at seq {seq}: {reason}\n"),
            ),
            _ => (StatusCode::OK, "ready\n".into()),
        },
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable\n".into(),
        ),
    }
}

async fn metrics_text(State(h): State<Http>) -> (StatusCode, String) {
    match h.metrics {
        Some(m) => (StatusCode::OK, m.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".into(),
        ),
    }
}
