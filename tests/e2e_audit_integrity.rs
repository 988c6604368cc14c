//! End to end: audit integrity beyond the database (issue 10, class 5).
//!
//! The auth service is stopped and its SQLite file tampered with directly (python3's
//! sqlite3 module) the ways someone who can write the database would: delete the newest
//! events, delete all of them, edit one and recompute the whole chain. `sigil audit
//! verify` (signed checkpoints, `audit-head.json`) and `--head`/`--checkpoint` (a head
//! recorded earlier) must fail naming the sequence; the untampered log must pass. Then
//! agents as witnesses (a database rolled back to an older copy is refused) and the
//! aggregation of floods of identical denials.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Recomputes the hash chain exactly as sigil-store does (audit.rs) with python3, so a
/// forged log is consistent. `check` only compares; `edit SEQ OLD NEW` rewrites a field
/// value of event SEQ, then re-chains every event; `sql STATEMENT` runs one statement.
const TAMPER: &str = r#"
import hashlib, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
mode = sys.argv[2]
if mode == "sql":
    db.execute(sys.argv[3]); db.commit(); sys.exit(0)
prev = "0" * 64
bad = 0
for seq, t, typ, fields, stored_prev, stored in db.execute(
        "SELECT seq, time, type, fields, prev_hash, hash FROM audit ORDER BY seq").fetchall():
    if mode == "edit" and seq == int(sys.argv[3]):
        assert sys.argv[4] in fields, fields
        fields = fields.replace(sys.argv[4], sys.argv[5])
    body = ('{"fields":' + fields + ',"seq":' + str(seq) + ',"time":' + json.dumps(t)
            + ',"type":' + json.dumps(typ) + '}')
    h = hashlib.sha256((prev + "\n" + body).encode()).hexdigest()
    if mode == "check":
        bad += (h != stored or prev != stored_prev)
    else:
        db.execute("UPDATE audit SET fields=?, prev_hash=?, hash=? WHERE seq=?", (fields, prev, h, seq))
    prev = h
db.commit()
print(bad)
"#;

fn tamper(db: &Path, args: &[&str]) -> String {
    let db = db.to_str().expect("utf8");
    let mut all = vec!["-c", TAMPER, db];
    all.extend_from_slice(args);
    let o = run("python3", &all);
    assert!(o.status.success(), "python3 tamper {args:?}: {}", text(&o));
    stdout(&o).trim().to_string()
}

/// A service with a few events and a saved checkpoint; stopped. Returns it, the head
/// `SEQ:HASH` printed by `sigil audit checkpoint` and the saved checkpoint file.
fn seeded() -> (Auth, String, std::path::PathBuf) {
    let auth = Auth::start();
    auth.bot("evidence", &["root"]);
    auth.bot("other", &["web"]);
    let file = auth.dir.path().join("checkpoint.json");
    let mut head = String::new();
    wait_until("a signed checkpoint", Duration::from_secs(30), || {
        let o = auth.admin(&["audit", "checkpoint", "--out", file.to_str().expect("utf8")]);
        head = stdout(&o).trim().to_string();
        o.status.success()
    });
    let mut auth = auth;
    auth.stop();
    let db = auth.data.join("sigil.db");
    assert_eq!(
        tamper(&db, &["check"]),
        "0",
        "python's chain computation must match the service's (else the forgery proves nothing)"
    );
    (auth, head, file)
}

fn verify(auth: &Auth, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    auth.admin(&args)
}

fn assert_fails(o: &std::process::Output, want: &[&str]) {
    assert!(!o.status.success(), "verify passed:\n{}", text(o));
    let t = text(o);
    for w in want {
        assert!(t.contains(w), "{w:?} missing in:\n{t}");
    }
}

#[test]
fn untampered_log_verifies_with_checkpoints_and_recorded_heads() {
    let (mut auth, head, file) = seeded();
    auth.spawn();
    auth.bot("later", &["x"]);
    let o = verify(&auth, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("audit log intact"), "{}", text(&o));
    let o = verify(&auth, &["--head", &head]);
    assert!(o.status.success(), "{}", text(&o));
    let o = verify(&auth, &["--checkpoint", file.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", text(&o));
    // The public key is printed by status and kept in a file to pin.
    let st: serde_json::Value =
        serde_json::from_str(&auth.ok(&["status", "--format", "json"])).expect("json");
    let key = st["audit_public_key"].as_str().expect("key");
    assert!(key.starts_with("ed25519:"), "{key}");
    assert_eq!(st["audit_integrity"], "intact");
    let pinned = std::fs::read_to_string(auth.data.join("audit-key.pub")).expect("pub");
    assert_eq!(pinned.trim(), key);
    assert_eq!(mode(&auth.data.join("audit-key.json")), 0o600);
    // A head that was never in this log is refused.
    let o = verify(&auth, &["--head", &format!("2:{}", "ab".repeat(32))]);
    assert_fails(&o, &["seq 2", "does not match"]);
    // ... but a mistyped head does not stop the service from signing.
    let o = auth.admin(&["audit", "checkpoint"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn deleting_the_newest_events_is_detected() {
    let (mut auth, head, _) = seeded();
    let seq: i64 = head.split(':').next().expect("seq").parse().expect("int");
    tamper(
        &auth.data.join("sigil.db"),
        &["sql", &format!("DELETE FROM audit WHERE seq > {}", seq - 3)],
    );
    auth.spawn();
    let o = verify(&auth, &[]);
    assert_fails(&o, &["BROKEN", "were deleted"]);
    let o = verify(&auth, &["--head", &head]);
    assert_fails(&o, &["BROKEN", &format!("seq {seq}")]);
    // Start-up noticed it too, and stopped signing.
    wait_until("the start-up verification", Duration::from_secs(30), || {
        auth.log().contains("AUDIT LOG INTEGRITY FAILURE")
    });
    let st: serde_json::Value =
        serde_json::from_str(&auth.ok(&["status", "--format", "json"])).expect("json");
    assert!(
        st["audit_integrity"]
            .as_str()
            .is_some_and(|s| s.starts_with("BROKEN")),
        "{st}"
    );
    let o = auth.admin(&["audit", "checkpoint"]);
    assert!(
        !o.status.success(),
        "a broken log got a signature:\n{}",
        text(&o)
    );
}

#[test]
fn deleting_every_event_is_detected_even_with_the_checkpoints() {
    let (mut auth, head, file) = seeded();
    let db = auth.data.join("sigil.db");
    tamper(&db, &["sql", "DELETE FROM audit"]);
    auth.spawn();
    assert_fails(&verify(&auth, &[]), &["BROKEN", "deleted"]);
    auth.stop();

    // The stored checkpoints deleted as well: audit-head.json (outside the db) still has one.
    tamper(&db, &["sql", "DELETE FROM audit"]);
    tamper(
        &db,
        &[
            "sql",
            "DELETE FROM kv WHERE key LIKE '/audit_checkpoints/%'",
        ],
    );
    auth.spawn();
    assert_fails(&verify(&auth, &[]), &["BROKEN", "audit-head.json"]);
    auth.stop();

    // Everything in the data dir rewritten: only a head recorded elsewhere tells.
    tamper(&db, &["sql", "DELETE FROM audit"]);
    tamper(
        &db,
        &[
            "sql",
            "DELETE FROM kv WHERE key LIKE '/audit_checkpoints/%'",
        ],
    );
    std::fs::remove_file(auth.data.join("audit-head.json")).expect("rm head");
    auth.spawn();
    let seq = head.split(':').next().expect("seq");
    assert_fails(
        &verify(&auth, &["--head", &head]),
        &["BROKEN", &format!("seq {seq}")],
    );
    assert_fails(
        &verify(&auth, &["--checkpoint", file.to_str().expect("utf8")]),
        &["BROKEN"],
    );
}

#[test]
fn editing_an_event_and_rechaining_is_detected() {
    let (mut auth, head, _) = seeded();
    let db = auth.data.join("sigil.db");
    // The event recording bot "evidence" now names someone else; every hash recomputed.
    let seq = run(
        "python3",
        &[
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT min(seq) FROM audit WHERE fields LIKE '%evidence%'\").fetchone()[0])",
            db.to_str().expect("utf8"),
        ],
    );
    let seq = stdout(&seq).trim().to_string();
    tamper(&db, &["edit", &seq, "evidence", "innocent"]);
    assert_eq!(
        tamper(&db, &["check"]),
        "0",
        "the forged chain is consistent"
    );
    auth.spawn();
    assert_fails(&verify(&auth, &[]), &["BROKEN", "rewritten"]);
    assert_fails(
        &verify(&auth, &["--head", &head]),
        &["BROKEN", "does not match"],
    );
}

#[test]
fn agents_refuse_a_server_whose_database_was_rolled_back() {
    let mut auth = Auth::start();
    let token = auth.bot("witness", &["w"]);
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    let witness = agent.storage.join("audit-witness.json");
    assert_eq!(mode(&witness), 0o600);

    // Keep an old copy of the database.
    auth.stop();
    let backup = auth.dir.path().join("backup");
    std::fs::create_dir_all(&backup).expect("mkdir");
    for f in ["sigil.db", "sigil.db-wal", "sigil.db-shm"] {
        if auth.data.join(f).exists() {
            std::fs::copy(auth.data.join(f), backup.join(f)).expect("copy");
        }
    }
    auth.spawn();
    wait_until("a signed checkpoint", Duration::from_secs(30), || {
        auth.admin(&["audit", "checkpoint"]).status.success()
    });
    let o = agent.oneshot(&auth, None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 2);
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&witness).expect("witness")).expect("json");
    assert!(seen["checkpoint"]["body"].is_string(), "{seen}");

    // Roll the database back.
    auth.stop();
    for f in ["sigil.db", "sigil.db-wal", "sigil.db-shm"] {
        let _ = std::fs::remove_file(auth.data.join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), auth.data.join(f)).expect("restore");
        }
    }
    auth.spawn();
    let cred_before = std::fs::read(agent.storage.join("credential.json")).expect("cred");
    let o = agent.oneshot(&auth, None);
    assert!(
        !o.status.success(),
        "the agent renewed against a rolled-back server:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("audit log witness"), "{}", text(&o));
    assert!(text(&o).contains("went backwards"), "{}", text(&o));
    assert_eq!(
        std::fs::read(agent.storage.join("credential.json")).expect("cred"),
        cred_before,
        "the last good credential is kept"
    );
    assert_eq!(agent.generation(), 2);
    // The service itself notices the rollback at start, from audit-head.json.
    assert_fails(&verify(&auth, &[]), &["BROKEN", "were deleted"]);

    // A running agent reports it on /readyz.
    let port = free_port();
    let mut child = agent
        .command(&auth, None, false)
        .args(["--diag-addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let url = format!("http://127.0.0.1:{port}/readyz");
    let mut body = String::new();
    wait_until(
        "the agent's /readyz to report the refusal",
        Duration::from_secs(30),
        || {
            body = stdout(&run("curl", &["-s", &url]));
            body.contains("audit log witness")
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.contains("keeping the current credential"), "{body}");
}

#[test]
fn floods_of_identical_denials_are_counted_not_dropped() {
    let mut auth = Auth::start();
    let agent = AgentDirs::new();
    const FLOOD: usize = 12;
    let denied = |token: &str| {
        let o = agent.oneshot(&auth, Some(token));
        assert!(
            !o.status.success() && text(&o).contains("join denied"),
            "{}",
            text(&o)
        );
    };
    for _ in 0..FLOOD {
        denied("bogus-flood-token");
    }
    let distinct = ["bogus-a", "bogus-b", "bogus-c"];
    for t in distinct {
        denied(t);
    }
    // Shutdown writes every open aggregate.
    auth.stop();
    auth.spawn();
    let rows = auth.audit("bot.join.denied");
    let hint = |t: &str| format!("sha256:{}", &sigil_pki::sha256_hex(t.as_bytes())[..16]);
    let flood: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            r["fields"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains(&hint("bogus-flood-token")))
        })
        .collect();
    let total: u64 = flood
        .iter()
        .map(|r| r["fields"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(
        total as usize, FLOOD,
        "every denial is accounted for: {flood:#?}"
    );
    assert!(flood.len() < FLOOD, "the flood was aggregated: {flood:#?}");
    let agg = flood
        .iter()
        .find(|r| r["fields"]["count"].is_u64())
        .expect("an aggregate row");
    assert!(agg["fields"]["first_time"].is_string() && agg["fields"]["last_time"].is_string());
    for t in distinct {
        let n = rows
            .iter()
            .filter(|r| {
                r["fields"]["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains(&hint(t)))
            })
            .count();
        assert_eq!(n, 1, "distinct denial {t} recorded once");
    }
    // Aggregate rows are part of the chain like any other.
    assert!(auth.admin(&["audit", "verify"]).status.success());
}
