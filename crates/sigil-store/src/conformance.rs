//! Behavioural test suite every [`Store`] backend must pass.
//!
//! Call [`run_all`] from a backend's integration test, or the individual functions.
//! Each test writes under its own fresh key prefix and audit event types, so the suite can
//! run against a store that already holds data (or twice against the same store). The
//! functions panic with a message naming the violated property.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::broadcast;

mod audit;
mod paging;
mod race;

pub use audit::{audit_chain, audit_query_filters};
pub use paging::{list_pages_and_count, purge_in_batches};
pub use race::{
    concurrent_create_single_winner, concurrent_delete_single_winner,
    concurrent_update_single_winner, failing_txns_leave_neighbours_committed,
};

use crate::{
    AuditQuery, AuditVerification, Item, NewAuditEvent, Op, Store, StoreError, Txn, WatchEvent,
};

/// Runs every test in this module, one after another.
pub async fn run_all(store: Arc<dyn Store>) {
    create_and_duplicate(&store).await;
    put_update_and_cas_conflict(&store).await;
    delete_with_cas(&store).await;
    list_prefix_ordering(&store).await;
    list_pages_and_count(&store).await;
    purge_in_batches(&store).await;
    expiry(&store).await;
    txn_is_atomic(&store).await;
    audit_chain(&store).await;
    audit_query_filters(&store).await;
    watch_events_in_commit_order(&store).await;
    concurrent_create_single_winner(&store).await;
    concurrent_delete_single_winner(&store).await;
    concurrent_update_single_winner(&store).await;
    failing_txns_leave_neighbours_committed(&store).await;
}

/// A key prefix / event-type namespace unique to this call.
fn scope(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "conformance/{test}/{}-{}/",
        OffsetDateTime::now_utc().unix_timestamp_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn create(key: &str, value: &[u8]) -> Op {
    Op::Create {
        key: key.into(),
        value: value.into(),
        expires: None,
    }
}

fn put(key: &str, value: &[u8], expires: Option<OffsetDateTime>) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        expires,
    }
}

fn update(key: &str, value: &[u8], expected_revision: Option<i64>) -> Op {
    Op::Update {
        key: key.into(),
        value: value.into(),
        expires: None,
        expected_revision,
    }
}

fn delete(key: &str, expected_revision: Option<i64>) -> Op {
    Op::Delete {
        key: key.into(),
        expected_revision,
    }
}

fn ops(ops: Vec<Op>) -> Txn {
    Txn { ops, audit: vec![] }
}

fn event(event_type: &str, fields: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        time: OffsetDateTime::now_utc(),
        event_type: event_type.into(),
        fields,
    }
}

/// Commits one op and returns its revision.
async fn one(store: &Arc<dyn Store>, op: Op, what: &str) -> i64 {
    match store.commit(ops(vec![op])).await {
        Ok(revs) if revs.len() == 1 => revs[0],
        other => panic!("{what}: expected one revision, got {other:?}"),
    }
}

async fn get(store: &Arc<dyn Store>, key: &str) -> Option<Item> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key} failed: {e}"))
}

async fn head(store: &Arc<dyn Store>) -> (i64, String) {
    match store.audit_verify().await {
        Ok(AuditVerification::Intact { count, head_hash }) => (count, head_hash),
        other => panic!("audit chain should be intact, got {other:?}"),
    }
}

async fn query(store: &Arc<dyn Store>, q: AuditQuery) -> Vec<crate::AuditRecord> {
    store
        .audit_query(q.clone())
        .await
        .unwrap_or_else(|e| panic!("audit_query {q:?} failed: {e}"))
}

/// Create stores an item; a second Create of a live key is `AlreadyExists` and changes nothing.
pub async fn create_and_duplicate(store: &Arc<dyn Store>) {
    let k = format!("{}a", scope("create"));
    assert_eq!(get(store, &k).await, None, "a fresh key must be absent");
    let rev = one(store, create(&k, b"v1"), "create").await;
    assert!(rev > 0, "revisions must be positive, got {rev}");
    let item = get(store, &k).await.expect("created item must be readable");
    assert_eq!(
        item,
        Item {
            key: k.clone(),
            value: b"v1".to_vec(),
            revision: rev,
            expires: None
        },
        "get must return what Create stored"
    );
    match store.commit(ops(vec![create(&k, b"v2")])).await {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, k, "error must name the key"),
        other => panic!("duplicate Create must be AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        get(store, &k).await.map(|i| i.value),
        Some(b"v1".to_vec()),
        "a failed Create must not change the item"
    );
}

/// Put upserts; Update needs a live item and honours `expected_revision`.
pub async fn put_update_and_cas_conflict(store: &Arc<dyn Store>) {
    let s = scope("update");
    let k = format!("{s}k");
    let r1 = one(store, put(&k, b"p1", None), "put (insert)").await;
    let r2 = one(store, put(&k, b"p2", None), "put (overwrite)").await;
    assert!(r2 > r1, "revisions must grow: {r1} then {r2}");
    let r3 = one(
        store,
        update(&k, b"u1", Some(r2)),
        "update with current revision",
    )
    .await;
    assert!(r3 > r2, "revisions must grow: {r2} then {r3}");
    match store
        .commit(ops(vec![update(&k, b"stale", Some(r2))]))
        .await
    {
        Err(StoreError::Conflict(key)) => assert_eq!(key, k),
        other => panic!("Update with a stale revision must be Conflict, got {other:?}"),
    }
    let item = get(store, &k).await.expect("item present");
    assert_eq!(
        (item.value, item.revision),
        (b"u1".to_vec(), r3),
        "a conflicting Update must not change the item"
    );
    let r4 = one(store, update(&k, b"u2", None), "unconditional update").await;
    assert!(r4 > r3);
    let missing = format!("{s}missing");
    match store.commit(ops(vec![update(&missing, b"x", None)])).await {
        Err(StoreError::NotFound(key)) => assert_eq!(key, missing),
        other => panic!("Update of an absent key must be NotFound, got {other:?}"),
    }
    assert_eq!(get(store, &missing).await, None, "Update must not create");
}

/// Delete removes a live item, honours `expected_revision`, and is `NotFound` after.
pub async fn delete_with_cas(store: &Arc<dyn Store>) {
    let k = format!("{}k", scope("delete"));
    let rev = one(store, create(&k, b"token"), "create").await;
    match store
        .commit(ops(vec![delete(&k, Some(rev + 1_000_000))]))
        .await
    {
        Err(StoreError::Conflict(key)) => assert_eq!(key, k),
        other => panic!("Delete with a wrong revision must be Conflict, got {other:?}"),
    }
    assert!(
        get(store, &k).await.is_some(),
        "a failed Delete must not delete"
    );
    let deleted_at = one(store, delete(&k, Some(rev)), "delete with current revision").await;
    assert!(
        deleted_at == 0 || deleted_at > rev,
        "Delete reports 0 or its place after the item's revision, got {deleted_at}"
    );
    assert_eq!(get(store, &k).await, None, "deleted item must be gone");
    match store.commit(ops(vec![delete(&k, None)])).await {
        Err(StoreError::NotFound(key)) => assert_eq!(key, k),
        other => panic!("Delete of an absent key must be NotFound, got {other:?}"),
    }
    // The key can be created again, with a new (higher) revision: no ABA on CAS.
    let again = one(store, create(&k, b"new"), "re-create").await;
    assert!(again > rev, "a re-created key must get a new revision");
}

/// `list` returns live items under the prefix only, sorted by key bytes.
pub async fn list_prefix_ordering(store: &Arc<dyn Store>) {
    let s = scope("list");
    let base = s.trim_end_matches('/').to_string();
    let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let inside = ["p/c/x", "p/a", "p/é", "p/", "p/b"];
    let mut txn_ops: Vec<Op> = inside
        .iter()
        .map(|k| put(&format!("{s}{k}"), k.as_bytes(), None))
        .collect();
    for outside in ["p", "p0", "q/a", "p.a"] {
        txn_ops.push(put(&format!("{s}{outside}"), b"out", None));
    }
    txn_ops.push(put(&format!("{s}p/expired"), b"gone", Some(past)));
    store
        .commit(ops(txn_ops))
        .await
        .unwrap_or_else(|e| panic!("seeding list test: {e}"));

    let got: Vec<String> = store
        .list(&format!("{s}p/"))
        .await
        .unwrap_or_else(|e| panic!("list: {e}"))
        .into_iter()
        .map(|i| i.key[s.len()..].to_string())
        .collect();
    assert_eq!(
        got,
        vec!["p/", "p/a", "p/b", "p/c/x", "p/é"],
        "list must return live keys under the prefix in byte order"
    );
    let all = store
        .list(&base)
        .await
        .unwrap_or_else(|e| panic!("list: {e}"));
    assert_eq!(all.len(), 9, "a shorter prefix must include every live key");
    let none = store
        .list(&format!("{s}zzz"))
        .await
        .unwrap_or_else(|e| panic!("list: {e}"));
    assert!(none.is_empty(), "an unused prefix must list nothing");
}

/// Expired items are invisible, absent for Create/Update/Delete, and purged with events.
pub async fn expiry(store: &Arc<dyn Store>) {
    let s = scope("expiry");
    let k = format!("{s}expired");
    let past = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    one(store, put(&k, b"old", Some(past)), "put expired").await;
    assert_eq!(
        get(store, &k).await,
        None,
        "an expired item must be invisible to get"
    );
    assert!(
        store.list(&s).await.map(|l| l.is_empty()).unwrap_or(false),
        "an expired item must be invisible to list"
    );
    match store.commit(ops(vec![update(&k, b"x", None)])).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("Update of an expired item must be NotFound, got {other:?}"),
    }
    match store.commit(ops(vec![delete(&k, None)])).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("Delete of an expired item must be NotFound, got {other:?}"),
    }
    let rev = one(store, create(&k, b"fresh"), "Create over an expired item").await;
    assert_eq!(
        get(store, &k).await.map(|i| (i.value, i.revision)),
        Some((b"fresh".to_vec(), rev)),
        "Create must replace an expired item"
    );

    let short = format!("{s}short");
    let expires = OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
    one(
        store,
        put(&short, b"brief", Some(expires)),
        "put short-lived",
    )
    .await;
    assert_eq!(
        get(store, &short).await.and_then(|i| i.expires),
        Some(expires),
        "expiry must round-trip"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(store, &short).await,
        None,
        "item must vanish once expired"
    );
    let mut rx = store.watch();
    let purged = store
        .purge_expired()
        .await
        .unwrap_or_else(|e| panic!("purge_expired: {e}"));
    assert!(purged >= 1, "purge_expired must remove the expired item");
    let deleted = collect(&mut rx, &s, 1).await;
    assert!(
        matches!(&deleted[..], [WatchEvent::Delete { key, .. }] if *key == short),
        "purge must emit Delete for the purged key, got {deleted:?}"
    );
    assert!(get(store, &k).await.is_some(), "purge must keep live items");
}

/// A failing op undoes the whole txn, including its audit events.
pub async fn txn_is_atomic(store: &Arc<dyn Store>) {
    let s = scope("txn");
    let event_type = format!("{s}event");
    let a = format!("{s}a");
    let rev_a = one(store, put(&a, b"a1", None), "seed").await;
    let (count_before, head_before) = head(store).await;

    let failing = Txn {
        ops: vec![
            put(&format!("{s}b"), b"b", None),
            update(&a, b"a2", Some(rev_a + 1_000_000)),
            create(&format!("{s}c"), b"c"),
        ],
        audit: vec![event(&event_type, json!({"n": 1}))],
    };
    match store.commit(failing).await {
        Err(StoreError::Conflict(key)) => assert_eq!(key, a, "the failing op's key"),
        other => panic!("txn with a conflicting op must fail with Conflict, got {other:?}"),
    }
    assert_eq!(
        get(store, &format!("{s}b")).await,
        None,
        "earlier op must be undone"
    );
    assert_eq!(
        get(store, &format!("{s}c")).await,
        None,
        "later op must not apply"
    );
    assert_eq!(get(store, &a).await.map(|i| i.revision), Some(rev_a));
    let q = AuditQuery {
        event_type: Some(event_type.clone()),
        ..Default::default()
    };
    assert!(
        query(store, q.clone()).await.is_empty(),
        "audit of a failed txn must not be appended"
    );
    assert_eq!(
        head(store).await,
        (count_before, head_before),
        "audit head must not move"
    );

    // The first failing op's error is returned.
    let d = format!("{s}d");
    match store
        .commit(ops(vec![
            create(&d, b"1"),
            delete(&format!("{s}nope"), None),
            create(&a, b"dup"),
        ]))
        .await
    {
        Err(StoreError::NotFound(key)) => assert_eq!(key, format!("{s}nope")),
        other => panic!("expected NotFound from the first failing op, got {other:?}"),
    }
    match store
        .commit(ops(vec![create(&d, b"1"), create(&d, b"2")]))
        .await
    {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, d),
        other => panic!("Create twice in one txn must fail, got {other:?}"),
    }
    assert_eq!(
        get(store, &d).await,
        None,
        "nothing of a failed txn may remain"
    );

    // A successful multi-op txn: ops see earlier ops of the same txn.
    let ok = Txn {
        ops: vec![
            create(&d, b"1"),
            update(&d, b"2", None),
            delete(&a, Some(rev_a)),
        ],
        audit: vec![event(&event_type, json!({"n": 2}))],
    };
    let revs = store
        .commit(ok)
        .await
        .unwrap_or_else(|e| panic!("multi-op txn: {e}"));
    assert_eq!(revs.len(), 3, "one revision per op");
    assert!(
        revs[0] > rev_a && revs[1] > revs[0] && (revs[2] == 0 || revs[2] > revs[1]),
        "revisions {revs:?}"
    );
    assert_eq!(
        get(store, &d).await.map(|i| (i.value, i.revision)),
        Some((b"2".to_vec(), revs[1]))
    );
    assert_eq!(get(store, &a).await, None);
    assert_eq!(
        query(store, q).await.len(),
        1,
        "audit of the committed txn is appended"
    );
}

/// A watch event as (key, Some((value, revision))) for a put or (key, None) for a delete.
type Summary = (String, Option<(Vec<u8>, i64)>);

/// Watchers see every committed change once, in commit order, and nothing of failed txns.
pub async fn watch_events_in_commit_order(store: &Arc<dyn Store>) {
    let s = scope("watch");
    let (a, b) = (format!("{s}a"), format!("{s}b"));
    let mut rx = store.watch();
    let r1 = one(store, create(&a, b"1"), "create a").await;
    let r2 = one(store, update(&a, b"2", Some(r1)), "update a").await;
    let _ = store
        .commit(ops(vec![create(&b, b"x"), create(&a, b"dup")]))
        .await;
    let revs = store
        .commit(ops(vec![put(&b, b"3", None), delete(&a, Some(r2))]))
        .await
        .unwrap_or_else(|e| panic!("put+delete: {e}"));
    let got = collect(&mut rx, &s, 4).await;
    let summary: Vec<Summary> = got
        .iter()
        .map(|e| match e {
            WatchEvent::Put(i) => (i.key.clone(), Some((i.value.clone(), i.revision))),
            WatchEvent::Delete { key, .. } => (key.clone(), None),
            WatchEvent::Reset => panic!("unexpected Reset in a short test"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (a.clone(), Some((b"1".to_vec(), r1))),
            (a.clone(), Some((b"2".to_vec(), r2))),
            (b.clone(), Some((b"3".to_vec(), revs[0]))),
            (a.clone(), None),
        ],
        "watch events must match committed changes in order"
    );
    // Nothing more (in particular nothing from the failed txn) is pending.
    let extra = collect_for(&mut rx, &s, Duration::from_millis(100)).await;
    assert!(extra.is_empty(), "unexpected extra watch events: {extra:?}");
}

/// Receives exactly `n` events for keys under `prefix` (5 s timeout).
async fn collect(
    rx: &mut broadcast::Receiver<WatchEvent>,
    prefix: &str,
    n: usize,
) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if event_key(&ev).starts_with(prefix) => out.push(ev),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watch receiver failed: {e}"),
            Err(_) => panic!("timed out waiting for {n} watch events under {prefix}; got {out:?}"),
        }
    }
    out
}

/// Receives events under `prefix` for `wait`.
async fn collect_for(
    rx: &mut broadcast::Receiver<WatchEvent>,
    prefix: &str,
    wait: Duration,
) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if event_key(&ev).starts_with(prefix) {
            out.push(ev);
        }
    }
    out
}

fn event_key(ev: &WatchEvent) -> &str {
    match ev {
        WatchEvent::Put(i) => &i.key,
        WatchEvent::Delete { key, .. } => key,
        WatchEvent::Reset => "",
    }
}
