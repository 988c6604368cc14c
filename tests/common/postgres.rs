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

/// A PostgreSQL server of a test's own, for tests that stop and restart it.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    pub url: String,
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-postgres")
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("sigil-pg-")
            .tempdir()
            .expect("tempdir");
        let port = super::free_port();
        let out = Command::new(script())
            .args([
                "start",
                &dir.path().display().to_string(),
                &port.to_string(),
            ])
            .output()
            .expect("run scripts/test-postgres");
        assert!(
            out.status.success(),
            "starting PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        PrivatePostgres { dir, port, url }
    }

    /// `stop`, `resume` (start again with its data) or `restart`.
    pub fn ctl(&self, cmd: &str) {
        let out = Command::new(script())
            .args([
                cmd,
                &self.dir.path().display().to_string(),
                &self.port.to_string(),
            ])
            .output()
            .expect("run scripts/test-postgres");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's data directory (postgresql.conf, pg_hba.conf).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new empty database on this server; its URL.
    pub fn fresh_db(&self, name: &str) -> String {
        psql(&self.url, &format!("CREATE DATABASE {name}"));
        with_db(&self.url, name)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", &self.dir.path().display().to_string()])
            .output();
    }
}
