//! PostgresStore against a real PostgreSQL 15: the conformance suite, then what only a
//! shared database has — two stores (as two auth servers would) racing, one audit chain
//! from concurrent writers, watch continuity across a database restart, a pruned feed.
//!
//! Needs `SIGIL_TEST_POSTGRES` (a superuser URL; `scripts/test` starts a server with
//! `scripts/test-postgres` and sets it). Each test makes its own database.

mod pg_common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pg_common::{assert_feed_contiguous, event, fresh_db, fresh_db_on, intact, next_event, put};
use serde_json::json;
use sigil_store::{
    AuditQuery, AuditVerification, Op, PostgresStore, SqliteStore, Store, StoreError, Txn,
    WatchEvent, conformance,
};
use sqlx::Connection as _;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let url = fresh_db().await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).await.expect("connect"));
    conformance::run_all(store.clone()).await;
    // Twice on the same store: the suite must not depend on an empty database.
    conformance::run_all(store).await;
    assert_feed_contiguous(&url).await;
}

/// Two stores on one database, as two auth servers: the suite's races run against both
/// at once, and every write of one reaches the other's watchers in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_cluster() {
    let url = fresh_db().await;
    let a = Arc::new(PostgresStore::connect(&url).await.expect("connect a"));
    let b = Arc::new(PostgresStore::connect(&url).await.expect("connect b"));

    // 20 Creates of one key, alternating between the servers: one winner.
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .commit(Txn {
                        ops: vec![Op::Create {
                            key: "race/token".into(),
                            value: format!("{i}").into_bytes(),
                            expires: None,
                        }],
                        audit: vec![event("token.used", json!({ "by": i }))],
                    })
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => winners += 1,
            Err(StoreError::AlreadyExists(k)) => assert_eq!(k, "race/token"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one Create wins across both servers");

    // Compare-and-swap from both servers on one counter: no lost update.
    let rev = b
        .get("race/token")
        .await
        .expect("get")
        .expect("item")
        .revision;
    let mut current = rev;
    let mut conflicts = 0;
    for i in 0..10 {
        let (me, other): (&PostgresStore, &PostgresStore) =
            if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // The other server writes first: my expected revision is now stale.
        let r = other
            .commit(Txn {
                ops: vec![Op::Update {
                    key: "race/token".into(),
                    value: vec![i],
                    expires: None,
                    expected_revision: Some(current),
                }],
                audit: vec![],
            })
            .await
            .expect("fresh CAS wins")[0];
        match me
            .commit(Txn {
                ops: vec![Op::Update {
                    key: "race/token".into(),
                    value: vec![100 + i],
                    expires: None,
                    expected_revision: Some(current),
                }],
                audit: vec![],
            })
            .await
        {
            Err(StoreError::Conflict(_)) => conflicts += 1,
            other => panic!("a stale CAS from the other server must conflict: {other:?}"),
        }
        current = r;
    }
    assert_eq!(conflicts, 10);

    // Concurrent audit writers on both servers make one linear chain.
    let (before, _) = intact(a.as_ref()).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .commit(Txn {
                        ops: vec![],
                        audit: vec![event("both", json!({ "i": i })), event("both", json!({}))],
                    })
                    .await
                    .expect("append")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        intact(b.as_ref()).await.0,
        before + 80,
        "no event lost or forked"
    );

    // Both servers at once, each folding its queue into batches that mix failing
    // single-op txns, multi-op txns and audit: one counter, one contiguous feed, one chain.
    let (before, _) = intact(a.as_ref()).await;
    let tasks: Vec<_> = (0..90)
        .map(|i| {
            let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
            let ops = match i % 3 {
                0 => vec![put(&format!("mix/{i}"), b"v")],
                1 => vec![Op::Create {
                    key: "race/token".into(),
                    value: b"dup".to_vec(),
                    expires: None,
                }],
                _ => vec![
                    put(&format!("mix/m{i}"), b"v"),
                    put(&format!("mix/n{i}"), b"v"),
                ],
            };
            tokio::spawn(async move {
                store
                    .commit(Txn {
                        ops,
                        audit: vec![event("mix", json!({ "i": i }))],
                    })
                    .await
            })
        })
        .collect();
    let mut committed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match (i % 3, t.await.expect("task")) {
            (1, Err(StoreError::AlreadyExists(_))) => {}
            (0 | 2, Ok(_)) => committed += 1,
            (_, other) => panic!("txn {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(committed, 60);
    assert_eq!(
        intact(b.as_ref()).await.0,
        before + 60,
        "exactly the committed txns' events, one chain"
    );
    assert_feed_contiguous(&url).await;

    // Writes through A reach B's watchers, in order, and purges too.
    let mut rx = b.watch();
    let r1 = a
        .commit(Txn {
            ops: vec![put("seen/x", b"1")],
            audit: vec![],
        })
        .await
        .expect("put")[0];
    let r2 = a
        .commit(Txn {
            ops: vec![put("seen/x", b"2")],
            audit: vec![],
        })
        .await
        .expect("put")[0];
    for (want_rev, want_val) in [(r1, b"1"), (r2, b"2")] {
        match next_event(&mut rx, "seen/").await {
            WatchEvent::Put(i) => {
                assert_eq!((i.revision, i.value.as_slice()), (want_rev, &want_val[..]))
            }
            other => panic!("expected a Put, got {other:?}"),
        }
    }
    a.commit(Txn {
        ops: vec![Op::Put {
            key: "seen/brief".into(),
            value: b"b".to_vec(),
            expires: Some(OffsetDateTime::now_utc() + time::Duration::milliseconds(200)),
        }],
        audit: vec![],
    })
    .await
    .expect("put brief");
    assert!(matches!(
        next_event(&mut rx, "seen/").await,
        WatchEvent::Put(_)
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.purge_expired().await.expect("purge"), 1);
    match next_event(&mut rx, "seen/").await {
        WatchEvent::Delete { key, revision } => {
            assert_eq!(key, "seen/brief");
            assert!(revision > 0, "deletes are numbered in the feed");
        }
        other => panic!("a purge on A must reach B as a Delete, got {other:?}"),
    }
    assert!(b.health().is_ok(), "{:?}", b.health());
}

/// Rows missing from the feed (pruned while a server was away) give Reset, never a
/// silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_feed_resets_watchers() {
    let url = fresh_db().await;
    let store = PostgresStore::connect(&url).await.expect("connect");
    let mut rx = store.watch();
    let mut raw = sqlx::PgConnection::connect(&url).await.expect("raw");
    // As if revisions head+1..head+4 had been written and pruned, then head+5 written.
    let mut tx = raw.begin().await.expect("begin");
    let head: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE name = 'revision' FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .expect("head");
    sqlx::query(
        "INSERT INTO changes (revision, key, value, deleted) VALUES ($1, 'gap/x', '\\x01', false)",
    )
    .bind(head + 5)
    .execute(&mut *tx)
    .await
    .expect("insert");
    sqlx::query("UPDATE meta SET value = $1 WHERE name = 'revision'")
        .bind(head + 5)
        .execute(&mut *tx)
        .await
        .expect("advance");
    sqlx::query("SELECT pg_notify('sigil_changes', 'x')")
        .execute(&mut *tx)
        .await
        .expect("notify");
    tx.commit().await.expect("commit");
    assert!(matches!(
        next_event(&mut rx, "gap/").await,
        WatchEvent::Reset
    ));
    // And the feed carries on after the gap.
    store
        .commit(Txn {
            ops: vec![put("gap/y", b"2")],
            audit: vec![],
        })
        .await
        .expect("put");
    match next_event(&mut rx, "gap/").await {
        WatchEvent::Put(i) => assert_eq!(i.key, "gap/y"),
        other => panic!("expected the next write, got {other:?}"),
    }
}

/// A private server for tests that restart it.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    url: String,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("sigil-pg-")
            .tempdir()
            .expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/test-postgres"
        ))
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

    fn ctl(&self, cmd: &str) {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/test-postgres"
        ))
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
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/test-postgres"
        ))
        .args(["stop", &self.dir.path().display().to_string()])
        .output();
    }
}

/// Across a database restart: health goes bad while it is down, writes made while this
/// server's listener was away are delivered after it reconnects, in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_continues_across_a_database_restart() {
    let pg = PrivatePostgres::start();
    let url = fresh_db_on(&pg.url).await;
    let watcher = PostgresStore::connect(&url).await.expect("connect");
    let mut rx = watcher.watch();
    let writer = PostgresStore::connect(&url).await.expect("connect writer");
    writer
        .commit(Txn {
            ops: vec![put("r/1", b"1")],
            audit: vec![],
        })
        .await
        .expect("put");
    assert!(matches!(next_event(&mut rx, "r/").await, WatchEvent::Put(i) if i.key == "r/1"));

    pg.ctl("stop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watcher.health().is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health stayed Ok with the database down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        writer
            .commit(Txn {
                ops: vec![put("r/x", b"x")],
                audit: vec![]
            })
            .await
            .is_err(),
        "no write succeeds while the database is down"
    );
    pg.ctl("resume");
    // Written the moment the database is back, possibly before the watcher listens again.
    let mut wrote = Vec::new();
    for i in 2..6 {
        let key = format!("r/{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match writer
                .commit(Txn {
                    ops: vec![put(&key, b"v")],
                    audit: vec![],
                })
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "writer did not recover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        wrote.push(key);
    }
    for key in &wrote {
        match next_event(&mut rx, "r/").await {
            WatchEvent::Put(i) => assert_eq!(&i.key, key, "in order, none lost"),
            other => panic!("expected {key}, got {other:?}"),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = watcher.health() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health did not recover: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn verify_detects_tampering() {
    let url = fresh_db().await;
    let store = PostgresStore::connect(&url).await.expect("connect");
    for i in 0..5 {
        store
            .commit(Txn {
                ops: vec![],
                audit: vec![event("e", json!({ "i": i }))],
            })
            .await
            .expect("append");
    }
    intact(&store).await;
    let mut raw = sqlx::PgConnection::connect(&url).await.expect("raw");
    sqlx::query(r#"UPDATE audit SET fields = '{"i":99}' WHERE seq = 3"#)
        .execute(&mut raw)
        .await
        .expect("tamper");
    match store.audit_verify().await.expect("verify") {
        AuditVerification::Broken { seq, .. } => assert_eq!(seq, 3),
        other => panic!("tampering not detected: {other:?}"),
    }
    sqlx::query(r#"UPDATE audit SET fields = '{"i":2}' WHERE seq = 3"#)
        .execute(&mut raw)
        .await
        .expect("restore");
    sqlx::query("DELETE FROM audit WHERE seq = 2")
        .execute(&mut raw)
        .await
        .expect("delete");
    match store.audit_verify().await.expect("verify") {
        AuditVerification::Broken { seq, reason } => {
            assert_eq!(seq, 3);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("deletion not detected: {other:?}"),
    }
}

/// The audit log copied from SQLite keeps every hash, and new events chain onto it.
#[tokio::test]
async fn imported_audit_chain_verifies_and_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lite = SqliteStore::open(&dir.path().join("s.db"))
        .await
        .expect("sqlite");
    for i in 0..25 {
        lite.commit(Txn {
            ops: vec![],
            audit: vec![event(
                "lite",
                json!({ "i": i, "f": 0.1 + f64::from(i), "s": "é\u{1F600}" }),
            )],
        })
        .await
        .expect("append");
    }
    let (count, head) = intact(&lite).await;
    let records = lite
        .audit_query(AuditQuery::default())
        .await
        .expect("query");
    let pg = PostgresStore::connect(&fresh_db().await)
        .await
        .expect("connect");
    pg.import_audit(&records).await.expect("import");
    assert_eq!(
        intact(&pg).await,
        (count, head.clone()),
        "same chain, same head"
    );
    let err = pg
        .import_audit(&records)
        .await
        .expect_err("second import refused");
    assert!(err.to_string().contains("does not follow"), "{err}");
    pg.commit(Txn {
        ops: vec![],
        audit: vec![event("pg", json!({}))],
    })
    .await
    .expect("append");
    let (n, _) = intact(&pg).await;
    assert_eq!(n, count + 1);
    let last = pg
        .audit_query(AuditQuery {
            after_seq: Some(count),
            ..Default::default()
        })
        .await
        .expect("q");
    assert_eq!(last[0].prev_hash, head);
}
