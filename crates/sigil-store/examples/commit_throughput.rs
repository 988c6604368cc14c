//! Group-commit throughput of the SQLite store.
//!
//! `cargo run --release -p sigil-store --example commit_throughput [tasks] [seconds]`
//!
//! Each of `tasks` (default 64) concurrent tasks repeatedly commits
//! `Txn { ops: [Update of its own key with expected_revision], audit: [2 events] }`
//! against a temp-file database (WAL, synchronous=FULL) for `seconds` (default 5).
//! Prints committed txns/s, then checks the audit chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sigil_store::{AuditVerification, NewAuditEvent, Op, SqliteStore, Store, StoreError, Txn};
use time::OffsetDateTime;

#[tokio::main]
async fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);

    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).await?);

    let mut revisions = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let revs = store
            .commit(Txn {
                ops: vec![Op::Create {
                    key: format!("bench/{t}"),
                    value: vec![0; 64],
                    expires: None,
                }],
                audit: vec![],
            })
            .await?;
        revisions.push(revs[0]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for (t, mut rev) in revisions.into_iter().enumerate() {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let key = format!("bench/{t}");
            while !stop.load(Ordering::Relaxed) {
                let now = OffsetDateTime::now_utc();
                let txn = Txn {
                    ops: vec![Op::Update {
                        key: key.clone(),
                        value: vec![1; 64],
                        expires: None,
                        expected_revision: Some(rev),
                    }],
                    audit: vec![
                        NewAuditEvent {
                            time: now,
                            event_type: "bench.renew".into(),
                            fields: json!({"task": t, "revision": rev}),
                        },
                        NewAuditEvent {
                            time: now,
                            event_type: "bench.issue".into(),
                            fields: json!({"task": t, "serial": format!("{rev:x}")}),
                        },
                    ],
                };
                rev = store.commit(txn).await?[0];
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), StoreError>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for h in handles {
        h.await.map_err(|e| StoreError::Backend(e.to_string()))??;
    }
    println!(
        "{tasks} tasks, {:.1}s: {committed} txns committed, {:.0} txns/s",
        elapsed.as_secs_f64(),
        committed as f64 / elapsed.as_secs_f64()
    );

    let t = Instant::now();
    match store.audit_verify().await? {
        AuditVerification::Intact { count, .. } => println!(
            "audit chain intact: {count} records verified in {:.2}s",
            t.elapsed().as_secs_f64()
        ),
        broken => return Err(StoreError::Backend(format!("audit chain: {broken:?}"))),
    }
    Ok(())
}
