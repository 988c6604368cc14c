//! Edges of running several auth servers on PostgreSQL: an agent skips a server
//! whose audit log is behind what it witnessed (a server started on a restored
//! copy of the database) and renews through another; a server started on the
//! target of an unfinished `sigil auth migrate` refuses instead of creating a
//! cluster of its own; an agent restarted after its first join's answer was lost
//! retries with the same key; a server that cannot load CA records another wrote
//! goes unready and issues nothing until it can. Real `sigil` processes and a real
//! PostgreSQL 15 (`SIGIL_TEST_POSTGRES`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{admin_url, fresh_db, psql, with_db};
use common::*;

/// An auth server on the store `url`, signing with the audit key at `key`.
fn server(url: &str, key: &Path) -> Auth {
    Auth::start_with(&["--store", url, "--audit-key", key.to_str().expect("utf8")])
}

/// An agent oneshot against `auth_server` (`A` or `A,B`), logging at info.
fn agent_oneshot(dirs: &AgentDirs, auth_server: &str, pin: &str, token: Option<&str>) -> Output {
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
    .args(["--credential-ttl", "1h", "--oneshot"])
    .env("SIGIL_LOG", "info");
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    c.output().expect("run agent")
}

/// The seq of the checkpoint the agent witnessed.
fn witnessed_seq(dirs: &AgentDirs) -> i64 {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dirs.storage.join("audit-witness.json")).expect("witness"),
    )
    .expect("json");
    let body = v["checkpoint"]["body"].as_str().expect("a checkpoint");
    body.lines()
        .find_map(|l| l.strip_prefix("seq: "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no seq in the checkpoint body {body:?}"))
}

#[test]
fn an_agent_skips_a_server_behind_its_witness_and_renews_through_another() {
    let url = fresh_db();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("audit-key.json");
    let mut a = server(&url, &key);
    let token = a.bot("witness", &["w"]);
    let dirs = AgentDirs::new();
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, Some(&token));
    assert!(o.status.success(), "join through A:\n{}", text(&o));

    // A backup of the database, taken while no server runs (a server signs a
    // checkpoint covering everything when it stops).
    a.stop();
    let backup = format!("{}_backup", url.rsplit('/').next().expect("db name"));
    let db = url.rsplit('/').next().expect("db name").to_string();
    psql(
        &admin_url(),
        &format!("CREATE DATABASE {backup} TEMPLATE {db}"),
    );
    let backup_url = with_db(&url, &backup);

    // A goes on: more events, a checkpoint past the backup's, which the agent sees.
    a.spawn();
    for i in 0..10 {
        a.ok(&[
            "tokens",
            "add",
            "--bot",
            "witness",
            "--ttl",
            &format!("{}m", 10 + i),
        ]);
    }
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, None);
    assert!(o.status.success(), "renew through A:\n{}", text(&o));
    a.stop();
    a.spawn();
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, None);
    assert!(o.status.success(), "renew through A:\n{}", text(&o));
    assert_eq!(dirs.generation(), 3);
    let seen = witnessed_seq(&dirs);

    // B is started on the restored backup: same cluster, same CAs and audit
    // key, but its log ends before what the agent witnessed.
    let b = server(&backup_url, &key);
    assert_eq!(a.pin, b.pin, "the backup holds the same CAs");
    let b_seq: i64 = psql(&backup_url, "SELECT coalesce(max(seq), 0) FROM audit")
        .parse()
        .expect("seq");
    assert!(
        b_seq < seen,
        "B's log ({b_seq}) is behind the witness ({seen})"
    );

    // B first in the list: refused for its log, marked down, A renews.
    let servers = format!("{},{}", b.addr(), a.addr());
    let cred_before = std::fs::read(dirs.storage.join("credential.json")).expect("cred");
    let o = agent_oneshot(&dirs, &servers, &a.pin, None);
    let log = text(&o);
    assert!(o.status.success(), "renew with B refused, A next:\n{log}");
    assert_eq!(dirs.generation(), 4, "renewed once, through A");
    assert!(log.contains("audit log witness"), "{log}");
    assert!(log.contains("went backwards"), "{log}");
    let skipped = log
        .lines()
        .find(|l| l.contains("skipping it for a while"))
        .unwrap_or_else(|| panic!("no line says B is skipped:\n{log}"));
    assert!(skipped.contains(&b.addr()), "{skipped}");
    assert!(!log.contains("BEGIN PRIVATE KEY"), "{log}");
    assert_ne!(
        std::fs::read(dirs.storage.join("credential.json")).expect("cred"),
        cred_before
    );

    // Every server refused: fails closed, the last good credential kept.
    let cred_before = std::fs::read(dirs.storage.join("credential.json")).expect("cred");
    let o = agent_oneshot(&dirs, &b.addr(), &b.pin, None);
    assert!(
        !o.status.success(),
        "renewed through B alone:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("audit log witness"), "{}", text(&o));
    assert_eq!(
        std::fs::read(dirs.storage.join("credential.json")).expect("cred"),
        cred_before,
        "the last good credential is kept"
    );
    assert_eq!(dirs.generation(), 4);
}

/// Makes the audit copy into the database at `url` fail: a trigger, added when
/// the store creates its `audit` table, refuses every row inserted (per row: the
/// store's commits run an audit INSERT even when they carry no event). The migration then
/// stops after claiming the target, as one that crashed or lost its connection
/// half-way (or one still running) leaves it.
fn break_the_audit_copy(url: &str) {
    psql(
        url,
        "CREATE FUNCTION sigil_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'sigil test: the audit copy fails here'; END $$",
    );
    psql(
        url,
        "CREATE FUNCTION sigil_test_arm() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() \
             WHERE command_tag = 'CREATE TABLE' AND object_identity = 'public.audit') THEN \
           EXECUTE 'CREATE TRIGGER sigil_test_refuse BEFORE INSERT ON audit \
             FOR EACH ROW EXECUTE FUNCTION sigil_test_refuse()'; \
         END IF; END $$",
    );
    psql(
        url,
        "CREATE EVENT TRIGGER sigil_test_arm ON ddl_command_end EXECUTE FUNCTION sigil_test_arm()",
    );
}

fn migrate(from: &str, to: &str) -> Output {
    Command::new(sigil_bin())
        .args(["auth", "migrate", "--from", from, "--to", to])
        .output()
        .expect("run sigil auth migrate")
}

/// `sigil auth start` on `url` with a data dir of its own; its output once it
/// exits (or `None` if it was still serving after 60 s, then killed).
fn start_until_exit(url: &str) -> Option<Output> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--public-listen", "127.0.0.1:0"])
        .args(["--store", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sigil auth");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(child.wait_with_output().expect("output"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    eprintln!("still serving after 60 s:\n{}", text(&out));
    None
}

#[test]
fn a_server_started_on_an_unfinished_migration_target_refuses() {
    let mut lite = Auth::start();
    let token = lite.bot("mover", &["x"]);
    let dirs = AgentDirs::new();
    let o = dirs.oneshot(&lite, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    lite.stop();
    let from = format!("sqlite:{}", lite.data.join("sigil.db").display());

    let url = fresh_db();
    break_the_audit_copy(&url);
    let o = migrate(&from, &url);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("the audit copy fails here"),
        "{}",
        text(&o)
    );
    // Only the migration was to fail: a server could write there again.
    psql(&url, "DROP EVENT TRIGGER sigil_test_arm");
    psql(&url, "DROP TRIGGER sigil_test_refuse ON audit");

    // The target is claimed: a server there refuses and creates nothing.
    let o = start_until_exit(&url).expect("the server to exit, not serve a half-copied cluster");
    assert!(!o.status.success(), "{}", text(&o));
    let msg = text(&o);
    assert!(msg.contains("sigil auth migrate` is copying"), "{msg}");
    assert!(msg.contains("drop and re-create the database"), "{msg}");
    assert!(
        msg.contains(lite.data.to_str().expect("utf8")),
        "names the source: {msg}"
    );
    assert_eq!(
        psql(&url, "SELECT count(*) FROM kv WHERE key LIKE '/cas/%'"),
        "0"
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM audit"), "0");

    // The README's way out: drop and re-create the target, run it again.
    let db = url.rsplit('/').next().expect("db name").to_string();
    psql(&admin_url(), &format!("DROP DATABASE {db}"));
    psql(&admin_url(), &format!("CREATE DATABASE {db}"));
    let o = migrate(&from, &url);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM kv WHERE key LIKE '/migration/%'"
        ),
        "0",
        "the marker is gone once the migration has finished"
    );
    lite.extra_args = vec!["--store".into(), url.clone()];
    lite.spawn();
    let o = dirs.oneshot(&lite, None);
    assert!(o.status.success(), "renew after migrating:\n{}", text(&o));
    assert_eq!(dirs.generation(), 2);
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM audit WHERE type = 'cluster.created'"
        ),
        "1",
        "one cluster: the migrated one"
    );
}

fn joins_committed(url: &str) -> String {
    psql(url, "SELECT count(*) FROM audit WHERE type = 'bot.join'")
}

/// A TCP relay to `to` that passes everything on until the database at `url`
/// holds a committed join, then drops the connection instead of passing the
/// server's next bytes: the answer is lost, as when the server dies right after
/// committing. Returns its address.
fn answer_losing_relay(to: String, url: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let (Ok(client), Ok(server)) = (conn, TcpStream::connect(&to)) else {
                return;
            };
            let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let url = url.clone();
            std::thread::spawn(move || {
                let (mut client, mut server) = (client, server);
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = server.read(&mut buf) {
                    if joins_committed(&url) != "0" || client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_first_join_whose_answer_was_lost_is_retried_with_the_same_key_after_a_restart() {
    let url = fresh_db();
    let keys = tempfile::tempdir().expect("tempdir");
    let a = server(&url, &keys.path().join("audit-key.json"));
    let token = a.bot("restart", &["r"]);

    // The server commits the join; the agent never hears the answer.
    let relay = answer_losing_relay(a.addr(), url.clone());
    let dirs = AgentDirs::new();
    let o = agent_oneshot(&dirs, &relay, &a.pin, Some(&token));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("join denied"), "{}", text(&o));
    assert_eq!(joins_committed(&url), "1", "the server committed the join");
    assert!(!dirs.storage.join("credential.json").exists());
    let pending = dirs.storage.join("next_key.pem");
    assert_eq!(mode(&pending), 0o600, "the join's key is kept for a retry");
    let key_pem = std::fs::read_to_string(&pending).expect("next_key.pem");

    // A new agent process, the same token: the server recognises the key.
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, Some(&token));
    assert!(
        o.status.success(),
        "the retry after a restart:\n{}",
        text(&o)
    );
    let cred: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dirs.storage.join("credential.json")).expect("credential"),
    )
    .expect("json");
    assert_eq!(cred["key_pem"], key_pem.as_str(), "the same key");
    assert_eq!(cred["generation"], 1);
    assert!(!pending.exists(), "the pending key is removed once joined");
    let instances = a.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0]["metadata"]["name"], cred["instance_id"]);
    assert_eq!(a.audit("bot.join.retry").len(), 1);
    assert_eq!(joins_committed(&url), "1");
}

/// Writes `value` at `key` (or deletes it) behind the servers' backs, the way the
/// store does: a new revision from the counter and a change-feed row, which every
/// server's follower reads within a second.
fn write_behind(url: &str, key: &str, value: Option<&str>) {
    let bump =
        "WITH r AS (UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value)";
    let sql = match value {
        Some(v) => format!(
            "{bump}, k AS (INSERT INTO kv (key, value, revision) \
               SELECT '{key}', convert_to('{v}', 'UTF8'), value FROM r \
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, revision = EXCLUDED.revision \
               RETURNING revision) \
             INSERT INTO changes (revision, key, value, deleted) \
               SELECT revision, '{key}', convert_to('{v}', 'UTF8'), false FROM k"
        ),
        None => format!(
            "{bump}, d AS (DELETE FROM kv WHERE key = '{key}' RETURNING key) \
             INSERT INTO changes (revision, key, value, deleted) \
               SELECT r.value, d.key, NULL, true FROM r, d"
        ),
    };
    psql(url, &sql);
}

#[test]
fn a_server_that_cannot_load_the_clusters_cas_goes_unready_and_issues_nothing() {
    let url = fresh_db();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("audit-key.json");
    let a = server(&url, &key);
    let token = a.bot("stale", &["s"]);
    let dirs = AgentDirs::new();
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(readyz(&a).0, 200, "{}", readyz(&a).1);

    // A CA record this server cannot load (here: not a rotation record at all). It
    // must not go on signing with the CAs it has as if nothing had changed.
    write_behind(&url, "/ca_rotations/spiffe", Some("{not a rotation"));
    wait_until("the server to go unready", Duration::from_secs(15), || {
        readyz(&a).0 == 503
    });
    let (_, body) = readyz(&a);
    assert!(
        body.contains("CAs: reload failed") && !body.contains("rotation record"),
        "the reason stays in the log: {body}"
    );
    wait_until("the reason in the log", Duration::from_secs(5), || {
        a.log().contains("decoding the spiffe CA rotation record")
    });
    let credential = || std::fs::read(dirs.storage.join("credential.json")).expect("credential");
    let before = credential();
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, None);
    assert!(
        !o.status.success(),
        "renewed on a stale CA set:\n{}",
        text(&o)
    );
    assert!(
        text(&o).contains("could not load the cluster's current CAs"),
        "{}",
        text(&o)
    );
    assert_eq!(credential(), before, "the last good credential is kept");

    // Repaired: ready again, and renewals go through.
    write_behind(&url, "/ca_rotations/spiffe", None);
    wait_until(
        "the server to be ready again",
        Duration::from_secs(15),
        || readyz(&a).0 == 200,
    );
    let o = agent_oneshot(&dirs, &a.addr(), &a.pin, None);
    assert!(o.status.success(), "{}", text(&o));
}
