//! The Prometheus recorder both servers (auth service and agent) install:
//! fixed-bucket histograms for every `*_seconds` metric (they aggregate
//! across servers, unlike quantiles), `sigil_build_info`, and an upkeep
//! task that drains histogram samples whether or not anyone scrapes (the
//! recorder keeps raw samples until an upkeep).

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process's recorder with `buckets` for `*_seconds`
/// histograms, sets `sigil_build_info{component}` and runs `register` (which
/// creates the component's series at zero). `None` if a recorder is already
/// installed. Call once per process.
pub fn install(
    buckets: &[f64],
    component: &'static str,
    register: impl FnOnce(),
) -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), buckets)
        .ok()?
        .install_recorder()
        .ok()?;
    metrics::describe_gauge!(
        "sigil_build_info",
        "Always 1; the labels name the running build"
    );
    metrics::gauge!(
        "sigil_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "component" => component,
    )
    .set(1.0);
    register();
    Some(handle)
}

/// Drains histogram samples every few seconds until the process ends.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}
