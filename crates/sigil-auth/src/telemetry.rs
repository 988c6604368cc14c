//! The auth service's Prometheus figures (`/metrics` on the public listener).
//!
//! Every series a dashboard or an alert may name exists from start, at zero:
//! a `rate()` or an absent-series alert over a counter that appears only after
//! its first event is wrong for the first scrape interval. Latencies are
//! histograms with fixed buckets (aggregatable across HA servers, unlike
//! quantiles); gauges that need a read of the store are refreshed off the
//! request path.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::keys;
use crate::state::SharedState;

pub const JOIN_DURATION: &str = "sigil_join_duration_seconds";
pub const RENEWAL_DURATION: &str = "sigil_renewal_duration_seconds";
pub const CERT_ISSUE_DURATION: &str = "sigil_cert_issue_duration_seconds";

/// Buckets for every `*_seconds` histogram: 250 µs (a cached signature) to
/// 10 s (a join waiting on a cloud provider's API).
const BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Gauges from memory (locks, CAs, feed lag) are refreshed this often.
const GAUGES_EVERY: Duration = Duration::from_secs(15);
/// Instance counts are index scans (≈ 0.3 s of CPU each at 1,000,000
/// instances), so they are refreshed every this many gauge refreshes.
const INSTANCE_COUNT_EVERY: u32 = 4;

/// The label values each labelled counter can take, so all start at zero.
const COUNTERS: &[(&str, &str, &str, &[&str])] = &[
    (
        "sigil_joins_total",
        "Bot joins by result",
        "result",
        &["ok", "denied", "abandoned", "retry"],
    ),
    (
        "sigil_renewals_total",
        "Bot credential renewals by result",
        "result",
        &["ok", "denied", "generation_mismatch"],
    ),
    (
        "sigil_certs_issued_total",
        "Certificates issued, by kind",
        "kind",
        &[
            "x509",
            "ssh",
            "ssh_host",
            "database",
            "database_server",
            "kubernetes",
        ],
    ),
    (
        "sigil_svids_issued_total",
        "SPIFFE SVIDs issued, by kind",
        "kind",
        &["x509", "jwt"],
    ),
];

const PLAIN_COUNTERS: &[(&str, &str)] = &[
    (
        "sigil_superseded_credentials_total",
        "Calls refused because a renewal had superseded the presented credential",
    ),
    (
        "sigil_app_jwts_signed_total",
        "Identity JWTs signed for the app proxy",
    ),
];

/// Listeners and the groups rustls offers (see `key_exchange.rs`).
const TLS_LISTENERS: &[&str] = &["control", "public"];
const TLS_GROUPS: &[&str] = &["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"];

/// Certificate kinds timed by [`issue`] (the `kind` label).
const ISSUE_KINDS: &[&str] = &[
    "x509",
    "ssh",
    "ssh_host",
    "x509_svid",
    "database",
    "database_server",
    "kubernetes",
];

/// Install the recorder once per process and register every series at zero.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| sigil_proto::telemetry::install(BUCKETS, "auth", register))
        .clone()
}

fn register() {
    for (name, help, label, values) in COUNTERS {
        describe_counter!(*name, Unit::Count, *help);
        for v in *values {
            metrics::counter!(*name, *label => *v).absolute(0);
        }
    }
    for (name, help) in PLAIN_COUNTERS {
        describe_counter!(*name, Unit::Count, *help);
        metrics::counter!(*name).absolute(0);
    }
    describe_counter!(
        "sigil_tls_handshakes_total",
        Unit::Count,
        "TLS handshakes completed, by listener and negotiated key-exchange group"
    );
    for l in TLS_LISTENERS {
        for g in TLS_GROUPS {
            metrics::counter!("sigil_tls_handshakes_total", "listener" => *l, "group" => *g)
                .absolute(0);
        }
    }
    describe_histogram!(
        JOIN_DURATION,
        Unit::Seconds,
        "Time from a join's first message to its result (or refusal)"
    );
    describe_histogram!(
        RENEWAL_DURATION,
        Unit::Seconds,
        "Time to answer a renewal call, durable commit included"
    );
    describe_histogram!(
        CERT_ISSUE_DURATION,
        Unit::Seconds,
        "Time to build and sign one certificate, by kind"
    );
    for r in ["ok", "error"] {
        // Registering is enough: it renders with empty buckets.
        let _ = metrics::histogram!(JOIN_DURATION, "result" => r);
        let _ = metrics::histogram!(RENEWAL_DURATION, "result" => r);
    }
    for k in ISSUE_KINDS {
        // Registering is enough: it renders with empty buckets.
        let _ = metrics::histogram!(CERT_ISSUE_DURATION, "kind" => *k);
    }
    sigil_store::metrics::register();
    describe_gauge!(
        "sigil_bot_instances",
        "Bot instance records stored, by state (current: credential unexpired; expired: kept until the retention period ends)"
    );
    describe_gauge!("sigil_bots", "Bots defined");
    describe_gauge!(
        "sigil_locks",
        "Locks in force, by target kind (expired locks excluded)"
    );
    describe_gauge!(
        "sigil_ca_expiry_seconds",
        Unit::Seconds,
        "Seconds until each CA's current certificate expires (SSH CAs do not expire and are absent)"
    );
    describe_gauge!(
        "sigil_change_feed_lag_seconds",
        Unit::Seconds,
        "Seconds since this server last read the shared store's change feed (0 on the embedded store)"
    );
    describe_gauge!(
        "sigil_audit_integrity_ok",
        "1 while the audit chain verifies, 0 once a break is found"
    );
    describe_gauge!(
        "sigil_audit_checkpoint_seq",
        "Audit sequence number of the newest signed checkpoint"
    );
    for s in ["current", "expired"] {
        metrics::gauge!("sigil_bot_instances", "state" => s).set(0.0);
    }
    metrics::gauge!("sigil_bots").set(0.0);
    for t in sigil_types::LOCK_TARGET_KINDS {
        metrics::gauge!("sigil_locks", "target" => *t).set(0.0);
    }
    metrics::gauge!("sigil_change_feed_lag_seconds").set(0.0);
    metrics::gauge!("sigil_audit_checkpoint_seq").set(0.0);
}

/// Records `started.elapsed()` in histogram `name` labelled `result`.
pub fn observe<T, E>(name: &'static str, started: Instant, r: &Result<T, E>) {
    let result = if r.is_ok() { "ok" } else { "error" };
    metrics::histogram!(name, "result" => result).record(started.elapsed().as_secs_f64());
}

/// Runs one certificate build-and-sign, timed under `kind`.
pub fn issue<T>(kind: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    metrics::histogram!(CERT_ISSUE_DURATION, "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    out
}

/// Drains histogram samples and refreshes the store-derived gauges, until
/// the process ends.
pub fn spawn(handle: PrometheusHandle, state: SharedState) {
    sigil_proto::telemetry::spawn_upkeep(handle);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAUGES_EVERY);
        for round in 0u32.. {
            tick.tick().await;
            refresh_gauges(&state);
            if round % INSTANCE_COUNT_EVERY == 0 {
                count_instances(&state).await;
            }
        }
    });
}

fn refresh_gauges(state: &SharedState) {
    let now = time::OffsetDateTime::now_utc();
    metrics::gauge!("sigil_bots").set(state.cache.bots().len() as f64);
    let mut by_target: std::collections::BTreeMap<&'static str, u64> =
        sigil_types::LOCK_TARGET_KINDS
            .iter()
            .map(|t| (*t, 0))
            .collect();
    for lock in state.cache.locks() {
        *by_target.entry(lock.spec.target.kind_str()).or_default() += 1;
    }
    for (t, n) in by_target {
        metrics::gauge!("sigil_locks", "target" => t).set(n as f64);
    }
    for (purpose, not_after) in ca_expiries(state) {
        metrics::gauge!("sigil_ca_expiry_seconds", "type" => purpose)
            .set((not_after - now).whole_seconds() as f64);
    }
    metrics::gauge!("sigil_change_feed_lag_seconds").set(
        state
            .store
            .feed_lag()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    );
}

async fn count_instances(state: &SharedState) {
    let now = time::OffsetDateTime::now_utc();
    // An instance record outlives its credential by the retention period, so
    // records expiring within that period are those whose credential expired.
    let prefix = keys::BOT_INSTANCES;
    let total = state.store.count(prefix).await;
    let expired = state
        .store
        .count_expiring_before(prefix, now + state.instance_retention)
        .await;
    if let (Ok(total), Ok(expired)) = (total, expired) {
        metrics::gauge!("sigil_bot_instances", "state" => "expired").set(expired as f64);
        metrics::gauge!("sigil_bot_instances", "state" => "current")
            .set(total.saturating_sub(expired) as f64);
    }
}

/// `(purpose, not_after)` of every X.509 CA's current certificate.
fn ca_expiries(state: &SharedState) -> Vec<(&'static str, time::OffsetDateTime)> {
    state
        .cas()
        .stored
        .iter()
        .filter_map(|c| {
            let (_, not_after) = crate::api::ca_export::fingerprint_and_expiry(c);
            Some((c.purpose.as_str(), not_after?))
        })
        .collect()
}
