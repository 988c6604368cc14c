//! The agent's Prometheus figures (`/metrics` on `diag_addr`).
//!
//! As on the auth service, every series exists from start at zero
//! (`sigil_proto::telemetry` installs the recorder).

use std::sync::OnceLock;
use std::time::Instant;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;

pub const RENEWAL_DURATION: &str = "sigil_agent_renewal_duration_seconds";
pub const WORKLOAD_API_DURATION: &str = "sigil_agent_workload_api_call_duration_seconds";
pub const WORKLOAD_API_CALLS: &str = "sigil_agent_workload_api_calls_total";

/// 50 µs (a cached SVID) to 10 s (a renewal riding out a failover).
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

const COUNTERS: &[(&str, &str)] = &[
    (
        "sigil_agent_reload_failures_total",
        "Output reload commands that failed",
    ),
    (
        "sigil_agent_auth_server_failures_total",
        "Auth servers that could not be reached or refused to serve",
    ),
    (
        "sigil_agent_auth_server_switches_total",
        "Moves to another auth server",
    ),
    (
        "sigil_agent_svid_issuances_total",
        "SVID batches received from the auth service",
    ),
    (
        "sigil_agent_ssh_sessions_ended_total",
        "SSH sessions ended because their certificate was locked",
    ),
    (
        "sigil_agent_audit_witness_refusals_total",
        "Auth servers refused because their audit log was behind what this agent witnessed",
    ),
];

/// The Workload API and SDS methods, as the `method` label names them.
pub const WORKLOAD_API_METHODS: &[(&str, &str)] = &[
    ("/SpiffeWorkloadAPI/FetchX509SVID", "FetchX509SVID"),
    ("/SpiffeWorkloadAPI/FetchX509Bundles", "FetchX509Bundles"),
    ("/SpiffeWorkloadAPI/FetchJWTSVID", "FetchJWTSVID"),
    ("/SpiffeWorkloadAPI/FetchJWTBundles", "FetchJWTBundles"),
    ("/SpiffeWorkloadAPI/ValidateJWTSVID", "ValidateJWTSVID"),
    (
        "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
        "StreamSecrets",
    ),
    (
        "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
        "DeltaSecrets",
    ),
    (
        "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
        "FetchSecrets",
    ),
];

/// Install the recorder once per process and register every series at zero.
pub fn install() -> Option<PrometheusHandle> {
    static H: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    H.get_or_init(|| sigil_proto::telemetry::install(BUCKETS, "agent", register))
        .clone()
}

fn register() {
    describe_counter!(
        "sigil_agent_renewals_total",
        Unit::Count,
        "Join or renewal cycles, by result"
    );
    for r in ["ok", "error"] {
        metrics::counter!("sigil_agent_renewals_total", "result" => r).absolute(0);
        // Registering is enough: it renders with empty buckets.
        let _ = metrics::histogram!(RENEWAL_DURATION, "result" => r);
    }
    for (name, help) in COUNTERS {
        describe_counter!(*name, Unit::Count, *help);
        metrics::counter!(*name).absolute(0);
    }
    describe_gauge!(
        "sigil_agent_credential_expiry_timestamp_seconds",
        Unit::Seconds,
        "Unix time the agent's current credential expires (0 before the first)"
    );
    metrics::gauge!("sigil_agent_credential_expiry_timestamp_seconds").set(0.0);
    describe_histogram!(
        RENEWAL_DURATION,
        Unit::Seconds,
        "Time of one join or renewal cycle, outputs written"
    );
    describe_histogram!(
        WORKLOAD_API_DURATION,
        Unit::Seconds,
        "Time to answer a Workload API or SDS call (for a stream: until it opens with its first answer ready), by method"
    );
    describe_counter!(
        WORKLOAD_API_CALLS,
        Unit::Count,
        "Workload API and SDS calls, by method and gRPC status"
    );
    for (_, m) in WORKLOAD_API_METHODS {
        let _ = metrics::histogram!(WORKLOAD_API_DURATION, "method" => *m);
        metrics::counter!(WORKLOAD_API_CALLS, "method" => *m, "code" => "ok").absolute(0);
    }
}

/// Records one renewal cycle.
pub fn renewal_observed<T, E>(started: Instant, r: &Result<T, E>) {
    let result = if r.is_ok() { "ok" } else { "error" };
    metrics::histogram!(RENEWAL_DURATION, "result" => result)
        .record(started.elapsed().as_secs_f64());
}
