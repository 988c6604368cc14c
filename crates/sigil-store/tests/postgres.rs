//! PostgresStore against a real PostgreSQL 15: the conformance suite, then what only a
//! shared database has — two stores (as two auth servers would) racing, one audit chain
//! from concurrent writers, watch continuity across a database restart, a pruned feed.
//!
//! Needs `SIGIL_TEST_POSTGRES` (a superuser URL; `scripts/test` starts a server with
//! `scripts/test-postgres` and sets it). Each test makes its own database.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use sigil_store::{
    AuditQuery, AuditVerification, NewAuditEvent, Op, PostgresStore, SqliteStore, Store,
    StoreError, Txn, WatchEvent, conformance,
};
use sqlx::Connection as _;
use time::OffsetDateTime;

fn admin_url() -> String {
    std::env::var("SIGIL_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "SIGIL_TEST_POSTGRES is not set: run the tests with scripts/test, or start a server \
             with `scripts/test-postgres start` and export SIGIL_TEST_POSTGRES=<the URL it prints>"
        )
    })
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{db}{query}")
}

/// A new, empty database on the server at `admin`; returns its URL.
async fn fresh_db_on(admin: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "sigil_store_{}_{}_{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    with_db(admin, &name)
}

async fn fresh_db() -> String {
    fresh_db_on(&admin_url()).await
}

fn event(event_type: &str, fields: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        time: OffsetDateTime::now_utc(),
        event_type: event_type.into(),
        fields,
    }
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        expires: None,
    }
}

async fn intact(store: &dyn Store) -> (i64, String) {
    match store.audit_verify().await.expect("verify runs") {
        AuditVerification::Intact { count, head_hash } => (count, head_hash),
        broken => panic!("expected an intact chain, got {broken:?}"),
    }
}

/// Receives the next event whose key starts with `prefix` (or a Reset), 10 s at most.
async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<WatchEvent>,
    prefix: &str,
) -> WatchEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(WatchEvent::Put(i))) if i.key.starts_with(prefix) => {
                return WatchEvent::Put(i);
            }
            Ok(Ok(WatchEvent::Delete { key, revision })) if key.starts_with(prefix) => {
                return WatchEvent::Delete { key, revision };
            }
            Ok(Ok(WatchEvent::Reset)) => return WatchEvent::Reset,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watch failed: {e}"),
            Err(_) => panic!("no watch event under {prefix} within 10 s"),
        }
    }
}

/// Every revision from 1 to the counter has exactly one change row: no gap (which would
/// make followers reset) and nothing past the counter.
async fn assert_feed_contiguous(url: &str) {
    let mut raw = sqlx::PgConnection::connect(url).await.expect("raw");
    let (counter, rows, low, high): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT value FROM meta WHERE name = 'revision'), count(*), \
         coalesce(min(revision), 1), coalesce(max(revision), 0) FROM changes",
    )
    .fetch_one(&mut raw)
    .await
    .expect("read the feed");
    assert_eq!(
        (low, high, rows),
        (1, counter, counter),
        "the change feed must hold revisions 1..={counter} exactly once each"
    );
}

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

/// Concurrent commits through one server share database transactions (group commit:
/// their change rows carry one transaction start time), and a txn that fails among them
/// fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_a_transaction() {
    let url = fresh_db().await;
    let store = Arc::new(PostgresStore::connect(&url).await.expect("connect"));
    store
        .commit(Txn {
            ops: vec![put("taken", b"x")],
            audit: vec![],
        })
        .await
        .expect("seed");
    let barrier = Arc::new(tokio::sync::Barrier::new(40));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let op = if i % 8 == 7 {
                Op::Create {
                    key: "taken".into(),
                    value: b"dup".to_vec(),
                    expires: None,
                }
            } else {
                put(&format!("batch/{i}"), b"v")
            };
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .commit(Txn {
                        ops: vec![op],
                        audit: vec![event("batch", json!({ "i": i }))],
                    })
                    .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        match (i % 8, t.await.expect("task")) {
            (7, Err(StoreError::AlreadyExists(k))) => assert_eq!(k, "taken"),
            (7, other) => panic!("txn {i}: expected AlreadyExists, got {other:?}"),
            (_, r) => {
                r.unwrap_or_else(|e| panic!("txn {i} failed beside a failing one: {e}"));
            }
        }
    }
    let mut raw = sqlx::PgConnection::connect(&url).await.expect("raw");
    let (rows, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT at) FROM changes WHERE key LIKE 'batch/%'")
            .fetch_one(&mut raw)
            .await
            .expect("read the feed");
    assert_eq!(rows, 35);
    assert!(
        transactions < rows,
        "35 concurrent commits took {transactions} database transactions: no group commit"
    );
    assert_feed_contiguous(&url).await;
    assert_eq!(
        intact(store.as_ref()).await.0,
        35,
        "only the committed txns are audited"
    );

    // A batch of one kind only (what renewals make) finishes in its run's statement;
    // one stale compare-and-swap among them still fails alone.
    let mut current = Vec::new();
    for i in 0..30 {
        let key = format!("cas/{i}");
        let rev = store
            .commit(Txn {
                ops: vec![put(&key, b"0")],
                audit: vec![],
            })
            .await
            .expect("seed")[0];
        current.push((key, rev));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = current
        .into_iter()
        .enumerate()
        .map(|(i, (key, rev))| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let expected = if i == 13 { rev - 1 } else { rev };
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .commit(Txn {
                        ops: vec![Op::Update {
                            key,
                            value: b"1".to_vec(),
                            expires: None,
                            expected_revision: Some(expected),
                        }],
                        audit: vec![event("cas", json!({ "i": i }))],
                    })
                    .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        match (i, t.await.expect("task")) {
            (13, Err(StoreError::Conflict(k))) => assert_eq!(k, "cas/13"),
            (13, other) => panic!("the stale update must conflict, got {other:?}"),
            (_, r) => {
                r.unwrap_or_else(|e| panic!("update {i} failed beside a stale one: {e}"));
            }
        }
    }
    assert_feed_contiguous(&url).await;
    assert_eq!(
        intact(store.as_ref()).await.0,
        35 + 29,
        "the 29 updates that applied are audited, in one chain"
    );
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

/// A database error fails the whole batch, leaves nothing behind, and the writer carries
/// on from the committed state with its next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failure_fails_the_batch_and_the_writer_recovers() {
    let url = fresh_db().await;
    let store = PostgresStore::connect(&url).await.expect("connect");
    let before = store
        .commit(Txn {
            ops: vec![put("k", b"1")],
            audit: vec![event("x", json!({}))],
        })
        .await
        .expect("put")[0];
    let mut raw = sqlx::PgConnection::connect(&url).await.expect("raw");
    sqlx::raw_sql(
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$; \
         CREATE TRIGGER fail BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION fail()",
    )
    .execute(&mut raw)
    .await
    .expect("trigger");
    match store
        .commit(Txn {
            ops: vec![put("k", b"2")],
            audit: vec![event("x", json!({}))],
        })
        .await
    {
        Err(StoreError::Backend(msg)) => {
            assert!(
                msg.contains("disk on fire") && msg.contains("nothing was committed"),
                "{msg}"
            )
        }
        other => panic!("expected the batch to fail, got {other:?}"),
    }
    assert_eq!(
        store.get("k").await.expect("get").map(|i| i.value),
        Some(b"1".to_vec()),
        "rolled back"
    );
    sqlx::query("DROP TRIGGER fail ON audit")
        .execute(&mut raw)
        .await
        .expect("drop trigger");
    let after = store
        .commit(Txn {
            ops: vec![put("k", b"3")],
            audit: vec![event("y", json!({}))],
        })
        .await
        .expect("writer recovered")[0];
    assert_eq!(after, before + 1, "the failed batch used no revision");
    assert_eq!(intact(&store).await.0, 2);
    assert_feed_contiguous(&url).await;
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
