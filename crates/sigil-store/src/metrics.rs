//! The store's Prometheus figures: how long a durable commit takes, as the
//! caller waits for it (queueing in the group-commit writer included).

use std::time::Instant;

use metrics::{Unit, describe_counter, describe_histogram};

pub const COMMIT_DURATION: &str = "sigil_store_commit_duration_seconds";
const COMMIT_FAILURES: &str = "sigil_store_commit_failures_total";
const BACKENDS: &[&str] = &["sqlite", "postgres"];

/// Describe the store's series and create them at zero.
pub fn register() {
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Time from a commit's submission to its durable result, by backend"
    );
    describe_counter!(
        COMMIT_FAILURES,
        Unit::Count,
        "Commits that failed (conflicts excluded), by backend"
    );
    for b in BACKENDS {
        // Registering is enough: it renders with empty buckets.
        let _ = metrics::histogram!(COMMIT_DURATION, "backend" => *b);
        metrics::counter!(COMMIT_FAILURES, "backend" => *b).absolute(0);
    }
}

pub(crate) fn commit_observed<T>(backend: &'static str, started: Instant, r: &crate::Result<T>) {
    metrics::histogram!(COMMIT_DURATION, "backend" => backend)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = r
        && !matches!(e, crate::StoreError::Conflict(_))
    {
        metrics::counter!(COMMIT_FAILURES, "backend" => backend).increment(1);
    }
}
