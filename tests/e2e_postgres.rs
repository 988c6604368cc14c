//! Several auth servers on one PostgreSQL database: one cluster, exactly-once tokens
//! across servers, locks enforced by every server, one audit key, and migration from
//! SQLite. Real `sigil` processes and a real PostgreSQL 15 (`SIGIL_TEST_POSTGRES`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::postgres::{fresh_db, psql};
use common::*;

/// An auth server on the shared store `url`, signing with the audit key at `key`.
fn server(url: &str, key: &Path) -> Auth {
    Auth::start_with(&["--store", url, "--audit-key", key.to_str().expect("utf8")])
}

fn shared_key_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let key = d.path().join("audit-key.json");
    (d, key)
}

/// An agent oneshot against `auth_server` (any server of the cluster).
fn agent_oneshot(
    dirs: &AgentDirs,
    auth_server: &str,
    pin: &str,
    token: Option<&str>,
) -> std::process::Output {
    let mut c = Command::new(sigil_bin());
    c.args([
        "agent",
        "start",
        "--auth-server",
        auth_server,
        "--ca-pin",
        pin,
    ])
    .arg("--storage")
    .arg(&dirs.storage)
    .arg("--output")
    .arg(format!("identity:{}", dirs.out.display()))
    .args(["--credential-ttl", "1h", "--oneshot"]);
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    c.output().expect("run agent")
}

#[test]
fn two_servers_serve_one_cluster() {
    let url = fresh_db();
    let (_k, key) = shared_key_dir();
    let a = server(&url, &key);
    let b = server(&url, &key);
    assert_eq!(a.pin, b.pin, "both servers serve the same CAs");
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM audit WHERE type = 'cluster.created'"
        ),
        "1",
        "one cluster, created once"
    );

    // A bot made through A joins through B and renews through A.
    let token = a.bot("ci", &["deploy"]);
    let dirs = AgentDirs::new();
    let out = agent_oneshot(&dirs, &b.addr(), &b.pin, Some(&token));
    assert!(out.status.success(), "join through B:\n{}", text(&out));
    assert_eq!(dirs.generation(), 1);
    let out = agent_oneshot(&dirs, &a.addr(), &a.pin, None);
    assert!(out.status.success(), "renew through A:\n{}", text(&out));
    assert_eq!(dirs.generation(), 2, "the generation counter is shared");
    let verify = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            dirs.out.join("ca.crt").to_str().expect("utf8"),
            dirs.out.join("tls.crt").to_str().expect("utf8"),
        ],
    );
    assert!(verify.status.success(), "{}", text(&verify));

    // A lock made through A is enforced by B.
    let bot_lock = a.ok(&["locks", "add", "--bot", "ci", "--message", "compromised"]);
    assert!(!bot_lock.is_empty());
    let mut refused = None;
    wait_until(
        "B to refuse the locked bot",
        Duration::from_secs(10),
        || {
            let out = agent_oneshot(&dirs, &b.addr(), &b.pin, None);
            let denied = !out.status.success();
            if denied {
                refused = Some(text(&out));
            }
            denied
        },
    );
    let refused = refused.unwrap_or_default();
    assert!(
        refused.contains("locked"),
        "refused for the lock: {refused}"
    );
    assert_eq!(
        dirs.generation(),
        2,
        "a refused renewal keeps the last credential"
    );

    // Every server's audit view is the one chain, and it verifies on both.
    for s in [&a, &b] {
        let v = s.ok(&["audit", "verify"]);
        assert!(v.contains("intact"), "{v}");
    }
    assert!(!a.audit("lock.created").is_empty());
    assert!(
        !b.audit("lock.created").is_empty(),
        "B reads the events A wrote"
    );
}

#[test]
fn a_token_is_used_once_across_servers() {
    let url = fresh_db();
    let (_k, key) = shared_key_dir();
    let a = server(&url, &key);
    let b = server(&url, &key);
    let token = a.bot("racer", &["x"]);
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let dirs = AgentDirs::new();
            let addr = if i % 2 == 0 { a.addr() } else { b.addr() };
            let child = Command::new(sigil_bin())
                .args(["agent", "start", "--auth-server", &addr, "--ca-pin", &a.pin])
                .arg("--storage")
                .arg(&dirs.storage)
                .arg("--output")
                .arg(format!("identity:{}", dirs.out.display()))
                .args(["--credential-ttl", "1h", "--oneshot", "--token", &token])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn agent");
            (dirs, child)
        })
        .collect();
    let mut joined = 0;
    for (_dirs, child) in racers {
        let out = child.wait_with_output().expect("agent");
        if out.status.success() {
            joined += 1;
        } else {
            assert_eq!(
                out.status.code(),
                Some(3),
                "a loser is denied: {}",
                text(&out)
            );
        }
    }
    assert_eq!(
        joined,
        1,
        "a single-use token joins exactly once across two servers:\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(
        psql(&url, "SELECT count(*) FROM audit WHERE type = 'bot.join'"),
        "1"
    );
    assert_eq!(a.instances().len(), 1);
}

#[test]
fn servers_starting_together_create_one_cluster() {
    let url = fresh_db();
    let (_k, key) = shared_key_dir();
    // The first server makes the audit key; the others must use the same file, so make
    // it first with a throwaway server, stopped, then empty the database again.
    drop(server(&url, &key));
    let db = url.rsplit('/').next().expect("db name").to_string();
    let admin = common::postgres::admin_url();
    psql(&admin, &format!("DROP DATABASE {db} WITH (FORCE)"));
    psql(&admin, &format!("CREATE DATABASE {db}"));
    let servers: Vec<Auth> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| server(&url, &key))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("server thread"))
            .collect()
    });
    assert!(
        servers.windows(2).all(|w| w[0].pin == w[1].pin),
        "every server serves the same CAs"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM audit WHERE type = 'cluster.created'"
        ),
        "1",
        "never a second set of CAs"
    );
    assert_eq!(
        psql(&url, "SELECT count(*) FROM kv WHERE key LIKE '/ca/%'"),
        psql(
            &url,
            "SELECT count(DISTINCT key) FROM kv WHERE key LIKE '/ca/%'"
        )
    );
}

#[test]
fn a_server_with_another_audit_key_is_refused() {
    let url = fresh_db();
    let (_k, key) = shared_key_dir();
    let _a = server(&url, &key);
    // No key file at all: told to copy it, and nothing is created.
    let d = tempfile::tempdir().expect("tempdir");
    let missing = d.path().join("audit-key.json");
    let out = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(d.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--public-listen", "127.0.0.1:0"])
        .args([
            "--store",
            &url,
            "--audit-key",
            missing.to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("copy the audit key file"),
        "{}",
        text(&out)
    );
    assert!(
        !missing.exists(),
        "no new key is made for a cluster that has one"
    );
    // Another server's key: refused, naming both keys.
    let other = tempfile::tempdir().expect("tempdir");
    let (_k2, key2) = shared_key_dir();
    let _ = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(other.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--public-listen", "127.0.0.1:0"])
        .args(["--audit-key", key2.to_str().expect("utf8")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|mut c| {
            wait_until("a key to be made", Duration::from_secs(30), || {
                key2.exists()
            });
            let _ = c.kill();
            let _ = c.wait();
        });
    let out = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(d.path().join("data2"))
        .args(["--listen", "127.0.0.1:0", "--public-listen", "127.0.0.1:0"])
        .args(["--store", &url, "--audit-key", key2.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("signs with the same key"),
        "{}",
        text(&out)
    );
    // A key lost for good is replaced only on purpose, and that is audited; the old
    // key's checkpoints leave the store with it, so the new key signs again.
    let c = Auth::start_with(&[
        "--store",
        &url,
        "--audit-key",
        key2.to_str().expect("utf8"),
        "--new-audit-key",
    ]);
    let replaced = c.audit("audit.key_replaced");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    let st: serde_json::Value =
        serde_json::from_str(&c.ok(&["status", "--format", "json"])).expect("json");
    assert_eq!(
        replaced[0]["fields"]["key"], st["audit_public_key"],
        "the new key is recorded"
    );
    assert!(replaced[0]["fields"]["previous_newest_checkpoint"].is_object());
    wait_until("the start-up verification", Duration::from_secs(10), || {
        let st: serde_json::Value =
            serde_json::from_str(&c.ok(&["status", "--format", "json"])).expect("json");
        st["audit_integrity"] == "intact"
    });
    let v = c.ok(&["audit", "verify"]);
    assert!(v.contains("intact"), "{v}");
}

#[test]
fn a_password_on_the_command_line_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let out = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(d.path())
        .args(["--listen", "127.0.0.1:0", "--public-listen", "127.0.0.1:0"])
        .args(["--store", "postgres://sigil:hunter2@127.0.0.1:1/sigil"])
        .env_remove("SIGIL_STORE")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("PGPASSWORD"), "{msg}");
    assert!(
        !msg.contains("hunter2"),
        "the password is never echoed: {msg}"
    );
}

#[test]
fn migrate_from_sqlite_keeps_identities_and_the_audit_chain() {
    let mut lite = Auth::start();
    let token = lite.bot("mover", &["x"]);
    let dirs = AgentDirs::new();
    let out = dirs.oneshot(&lite, Some(&token));
    assert!(out.status.success(), "{}", text(&out));
    lite.stop();
    lite.spawn();
    let head_before = lite.ok(&["audit", "verify"]);
    lite.stop();

    let url = fresh_db();
    // Refused while the source server runs.
    lite.spawn();
    let db = lite.data.join("sigil.db");
    let from = format!("sqlite:{}", db.display());
    let out = Command::new(sigil_bin())
        .args(["auth", "migrate", "--from", &from, "--to", &url])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("stop it before migrating"),
        "{}",
        text(&out)
    );
    lite.stop();

    let out = Command::new(sigil_bin())
        .args(["auth", "migrate", "--from", &from, "--to", &url])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("migrated"), "{}", text(&out));
    // Never over a cluster.
    let again = Command::new(sigil_bin())
        .args(["auth", "migrate", "--from", &from, "--to", &url])
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    // Its SQLite copy is not started by mistake.
    let stale = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(&lite.data)
        .args(["--listen", "127.0.0.1:0", "--public-listen", "127.0.0.1:0"])
        .env_remove("SIGIL_STORE")
        .output()
        .expect("run");
    assert!(!stale.status.success());
    assert!(text(&stale).contains("was migrated to"), "{}", text(&stale));
    // The same data dir (audit key, head file) on the PostgreSQL store.
    lite.extra_args = vec!["--store".into(), url.clone()];
    lite.spawn();
    let out = dirs.oneshot(&lite, None);
    assert!(
        out.status.success(),
        "renew after migrating:\n{}",
        text(&out)
    );
    assert_eq!(dirs.generation(), 2, "the bot instance came along");
    let after = lite.ok(&["audit", "verify"]);
    assert!(after.contains("intact"), "{after}");
    assert!(!head_before.is_empty());
    assert_eq!(lite.audit("cluster.migrated").len(), 1);
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM audit WHERE type = 'cluster.created'"
        ),
        "1",
        "the chain from the SQLite cluster's creation came along"
    );
}
