//! Tampering with the audit log in the SQLite file, the way someone who can
//! write the database would (the service stopped, sqlite3 on the file).
//! `sigil audit verify` must fail naming what broke; a head recorded earlier
//! (`--head SEQ:HASH`) catches a truncated tail. Each case tampers with a
//! fresh service of its own.

use crate::common::*;
use std::time::Duration;

/// A stopped service with a few events and its recorded head `SEQ:HASH`.
fn seeded() -> (Auth, String) {
    let auth = Auth::start();
    auth.bot("evidence", &["root"]);
    auth.bot("other", &["web"]);
    let mut head = String::new();
    wait_until("a signed checkpoint", Duration::from_secs(30), || {
        let o = auth.admin(&["audit", "checkpoint"]);
        head = stdout(&o).trim().to_string();
        o.status.success()
    });
    assert!(auth.admin(&["audit", "verify"]).status.success());
    let mut auth = auth;
    auth.stop();
    (auth, head)
}

fn sql(auth: &Auth, statement: &str) -> String {
    let db = auth.data.join("sigil.db");
    let o = run("sqlite3", &[db.to_str().expect("utf8"), statement]);
    assert!(o.status.success(), "{statement}: {}", text(&o));
    stdout(&o).trim().to_string()
}

/// Starts the tampered service again and runs `audit verify` with `extra`.
fn verify_fails(auth: &mut Auth, extra: &[&str], says: &[&str]) {
    auth.spawn();
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let o = auth.admin(&args);
    assert!(
        !o.status.success(),
        "ACCEPTED: verify passed:\n{}",
        text(&o)
    );
    let t = text(&o);
    for s in says {
        assert!(t.contains(s), "{s:?} missing in:\n{t}");
    }
}

fn evidence_seq(auth: &Auth) -> String {
    sql(
        auth,
        "SELECT min(seq) FROM audit WHERE fields LIKE '%\"evidence\"%'",
    )
}

/// attack: audit | one event's fields edited in place (hash left as it was) | `audit verify` fails: "BROKEN at seq N", "hash does not match the record's content"
#[test]
fn edited_row() {
    let (mut auth, _) = seeded();
    let seq = evidence_seq(&auth);
    sql(
        &auth,
        &format!(
            "UPDATE audit SET fields = replace(fields, 'evidence', 'innocent') WHERE seq = {seq}"
        ),
    );
    verify_fails(
        &mut auth,
        &[],
        &[
            &format!("BROKEN at seq {seq}"),
            "hash does not match the record's content",
        ],
    );
}

/// attack: audit | one event deleted from the middle of the chain | `audit verify` fails: BROKEN, "records N..=N are missing"
#[test]
fn deleted_row() {
    let (mut auth, _) = seeded();
    let seq = evidence_seq(&auth);
    sql(&auth, &format!("DELETE FROM audit WHERE seq = {seq}"));
    verify_fails(&mut auth, &[], &["BROKEN", "are missing"]);
}

/// attack: audit | two events' contents swapped (reordered rows, hashes moved along) | `audit verify` fails: BROKEN, "prev_hash does not match the hash of record"
#[test]
fn reordered_rows() {
    let (mut auth, _) = seeded();
    let seq: i64 = evidence_seq(&auth).parse().expect("seq");
    let next = seq + 1;
    sql(
        &auth,
        &format!(
            "UPDATE audit SET seq = -1 WHERE seq = {seq}; UPDATE audit SET seq = {seq} WHERE seq = {next}; UPDATE audit SET seq = {next} WHERE seq = -1"
        ),
    );
    verify_fails(
        &mut auth,
        &[],
        &["BROKEN", "prev_hash does not match the hash of record"],
    );
}

/// attack: audit | the newest events deleted (truncated tail), checked against a head recorded before | `audit verify --head` fails: BROKEN, "events N..=M were deleted"
#[test]
fn truncated_tail_against_a_recorded_head() {
    let (mut auth, head) = seeded();
    let (seq, _) = head.split_once(':').expect("SEQ:HASH");
    sql(&auth, &format!("DELETE FROM audit WHERE seq >= {seq} - 1"));
    verify_fails(&mut auth, &["--head", &head], &["BROKEN", "were deleted"]);
}

/// attack: audit | the oldest event deleted (truncated head of the chain) | `audit verify` fails: "BROKEN at seq 2", "records 1..=1 are missing"
#[test]
fn truncated_start_of_the_chain() {
    let (mut auth, _) = seeded();
    sql(
        &auth,
        "DELETE FROM audit WHERE seq = (SELECT min(seq) FROM audit)",
    );
    verify_fails(
        &mut auth,
        &[],
        &["BROKEN at seq 2", "records 1..=1 are missing"],
    );
}

/// attack: audit | a forged event appended with a made-up hash | `audit verify` fails: BROKEN, "hash does not match the record's content"
#[test]
fn forged_row_appended() {
    let (mut auth, _) = seeded();
    sql(
        &auth,
        "INSERT INTO audit (seq, time, type, fields, prev_hash, hash) SELECT max(seq) + 1, '2026-01-01T00:00:00.000000000Z', 'lock.deleted', '{}', hash, 'ab' || substr(hash, 3) FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
    );
    verify_fails(
        &mut auth,
        &[],
        &["BROKEN", "hash does not match the record's content"],
    );
}

/// attack: audit | one event's type changed (a bot join made to read as a restart) | `audit verify` fails: "BROKEN at seq N", "hash does not match"
#[test]
fn event_type_changed() {
    let (mut auth, _) = seeded();
    let seq = evidence_seq(&auth);
    sql(
        &auth,
        &format!("UPDATE audit SET type = 'auth.started' WHERE seq = {seq}"),
    );
    verify_fails(
        &mut auth,
        &[],
        &[&format!("BROKEN at seq {seq}"), "hash does not match"],
    );
}

/// attack: audit | one event's time moved back a day | `audit verify` fails: "BROKEN at seq N", "hash does not match"
#[test]
fn event_time_changed() {
    let (mut auth, _) = seeded();
    let seq = evidence_seq(&auth);
    sql(
        &auth,
        &format!("UPDATE audit SET time = '2020-01-01T00:00:00.000000000Z' WHERE seq = {seq}"),
    );
    verify_fails(
        &mut auth,
        &[],
        &[&format!("BROKEN at seq {seq}"), "hash does not match"],
    );
}

/// attack: audit | every event deleted | `audit verify` fails: BROKEN, "signed checkpoint ... were deleted"
#[test]
fn every_row_deleted() {
    let (mut auth, _) = seeded();
    sql(&auth, "DELETE FROM audit");
    verify_fails(
        &mut auth,
        &[],
        &["BROKEN", "signed checkpoint", "were deleted"],
    );
}

/// Recomputes the whole hash chain as sigil-store does, after replacing
/// `old` by `new` in event `seq`: a forgery consistent within the database.
const RECHAIN: &str = r#"
import hashlib, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1]); seq_edit = int(sys.argv[2])
prev = "0" * 64
for seq, t, typ, fields in db.execute("SELECT seq, time, type, fields FROM audit ORDER BY seq").fetchall():
    if seq == seq_edit:
        fields = fields.replace(sys.argv[3], sys.argv[4])
    body = ('{"fields":' + fields + ',"seq":' + str(seq) + ',"time":' + json.dumps(t) + ',"type":' + json.dumps(typ) + '}')
    h = hashlib.sha256((prev + "\n" + body).encode()).hexdigest()
    db.execute("UPDATE audit SET fields=?, prev_hash=?, hash=? WHERE seq=?", (fields, prev, h, seq))
    prev = h
db.commit()
"#;

/// attack: audit | one event edited and the whole hash chain recomputed to match | `audit verify` fails: BROKEN, "rewritten" (the signed checkpoints disagree)
#[test]
fn edited_row_with_the_chain_recomputed() {
    let (mut auth, _) = seeded();
    let seq = evidence_seq(&auth);
    let db = auth.data.join("sigil.db");
    let o = run(
        "python3",
        &[
            "-c",
            RECHAIN,
            db.to_str().expect("utf8"),
            &seq,
            "evidence",
            "innocent",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    verify_fails(&mut auth, &[], &["BROKEN", "rewritten"]);
}

/// attack: audit | the newest events deleted together with every signed checkpoint in the database | `audit verify` fails: BROKEN, "audit-head.json" (the head kept outside the database)
#[test]
fn tail_and_checkpoints_deleted() {
    let (mut auth, head) = seeded();
    let (seq, _) = head.split_once(':').expect("SEQ:HASH");
    sql(&auth, &format!("DELETE FROM audit WHERE seq >= {seq} - 1"));
    sql(
        &auth,
        "DELETE FROM kv WHERE key LIKE '/audit_checkpoints/%'",
    );
    verify_fails(
        &mut auth,
        &[],
        &["BROKEN", "(audit-head.json, seq", "were deleted"],
    );
}
