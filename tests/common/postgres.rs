//! PostgreSQL for end-to-end tests: a fresh database per test on the server that
//! `scripts/test` starts (`SIGIL_TEST_POSTGRES`), made with the real `psql`.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The test server's superuser URL.
pub fn admin_url() -> String {
    std::env::var("SIGIL_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "SIGIL_TEST_POSTGRES is not set: run the tests with scripts/test, or start a server \
             with `scripts/test-postgres start` and export SIGIL_TEST_POSTGRES=<the URL it prints>"
        )
    })
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{db}{query}")
}

/// Runs `sql` on the admin database with `psql`; panics with its output on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("run psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new empty database; returns its URL.
pub fn fresh_db() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "sigil_e2e_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let admin = admin_url();
    psql(&admin, &format!("DROP DATABASE IF EXISTS {name}"));
    psql(&admin, &format!("CREATE DATABASE {name}"));
    with_db(&admin, &name)
}
