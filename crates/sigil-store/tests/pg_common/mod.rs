//! Helpers shared by the PostgreSQL store tests.

#![allow(dead_code)] // each test file uses a part

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sigil_store::{AuditVerification, NewAuditEvent, Op, Store, WatchEvent};
use sqlx::Connection as _;
use time::OffsetDateTime;

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

/// A new, empty database on the server at `admin`; returns its URL.
pub async fn fresh_db_on(admin: &str) -> String {
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

pub async fn fresh_db() -> String {
    fresh_db_on(&admin_url()).await
}

pub fn event(event_type: &str, fields: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        time: OffsetDateTime::now_utc(),
        event_type: event_type.into(),
        fields,
    }
}

pub fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        expires: None,
    }
}

pub async fn intact(store: &dyn Store) -> (i64, String) {
    match store.audit_verify().await.expect("verify runs") {
        AuditVerification::Intact { count, head_hash } => (count, head_hash),
        broken => panic!("expected an intact chain, got {broken:?}"),
    }
}

/// Receives the next event whose key starts with `prefix` (or a Reset), 10 s at most.
pub async fn next_event(
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
pub async fn assert_feed_contiguous(url: &str) {
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
