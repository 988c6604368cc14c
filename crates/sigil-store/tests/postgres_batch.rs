//! PostgresStore's group commit against a real PostgreSQL 15: concurrent commits share
//! one database transaction, a txn that fails among them fails alone, a database error
//! fails its batch and the writer carries on. Needs `SIGIL_TEST_POSTGRES` (see
//! `postgres.rs`).

mod pg_common;

use std::sync::Arc;

use pg_common::{assert_feed_contiguous, event, fresh_db, intact, put};
use serde_json::json;
use sigil_store::{Op, PostgresStore, Store, StoreError, Txn};
use sqlx::Connection as _;

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
