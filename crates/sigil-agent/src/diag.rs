//! The agent's diagnostics listener: `/healthz` (the process is alive),
//! `/readyz` (it holds a valid credential and its last renewal worked) and
//! `/metrics` (Prometheus).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use time::OffsetDateTime;

#[derive(Default)]
struct Inner {
    expires: Option<OffsetDateTime>,
    last_error: Option<String>,
}

/// What `/readyz` reports, updated by the renewal loop.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Inner>>);

impl Readiness {
    pub fn succeeded(&self, expires: OffsetDateTime) {
        let mut i = self.0.lock().unwrap_or_else(|p| p.into_inner());
        i.expires = Some(expires);
        i.last_error = None;
        metrics::gauge!("sigil_agent_credential_expiry_timestamp_seconds")
            .set(expires.unix_timestamp() as f64);
    }

    pub fn failed(&self, err: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(err);
    }

    fn check(&self) -> Result<(), String> {
        let i = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match (i.expires, &i.last_error) {
            (None, Some(e)) => Err(format!("no credential yet: {e}")),
            (None, None) => Err("no credential yet".into()),
            (Some(x), _) if x <= OffsetDateTime::now_utc() => {
                Err("the credential has expired".into())
            }
            (Some(_), Some(e)) => Err(format!(
                "last renewal failed (credentials still valid): {e}"
            )),
            (Some(_), None) => Ok(()),
        }
    }
}

/// Bind now (so a bad address fails at start) and serve in the background.
pub async fn start(addr: &str, ready: Readiness) -> anyhow::Result<std::net::SocketAddr> {
    let metrics = crate::telemetry::install();
    if let Some(h) = metrics.clone() {
        sigil_proto::telemetry::spawn_upkeep(h);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("diag_addr {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(
                |State((r, _)): State<(Readiness, Option<PrometheusHandle>)>| async move {
                    match r.check() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(
                |State((_, m)): State<(Readiness, Option<PrometheusHandle>)>| async move {
                    m.map(|m| m.render()).unwrap_or_default()
                },
            ),
        )
        .with_state((ready, metrics));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "diagnostics server stopped");
        }
    });
    Ok(local)
}
