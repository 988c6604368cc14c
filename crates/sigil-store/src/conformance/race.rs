//! Concurrency conformance tests: compare-and-swap under contention.

use std::sync::Arc;

use serde_json::json;

use super::{create, delete, event, get, head, one, ops, put, query, scope, update};
use crate::{AuditQuery, Store, StoreError, Txn};

async fn spawn_each<F, Fut>(n: usize, f: F) -> Vec<crate::Result<Vec<i64>>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = crate::Result<Vec<i64>>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let fut = f(i);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| panic!("task panicked: {e}")));
    }
    out
}

/// 20 concurrent Creates of one key: exactly one wins, the rest are `AlreadyExists`.
pub async fn concurrent_create_single_winner(store: &Arc<dyn Store>) {
    let k = format!("{}k", scope("race-create"));
    let results = spawn_each(20, |i| {
        let (store, k) = (store.clone(), k.clone());
        async move {
            store
                .commit(ops(vec![create(&k, format!("{i}").as_bytes())]))
                .await
        }
    })
    .await;
    let winners: Vec<usize> = (0..20).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one Create may win: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::AlreadyExists(_)))),
        "losers must get AlreadyExists: {results:?}"
    );
    let item = get(store, &k).await.expect("winner's item");
    assert_eq!(
        item.value,
        winners[0].to_string().into_bytes(),
        "the winner's value is stored"
    );
}

/// 20 concurrent `Delete{expected_revision}` of one token (single-use consumption):
/// exactly one succeeds, and only its audit event is appended.
pub async fn concurrent_delete_single_winner(store: &Arc<dyn Store>) {
    let s = scope("race-delete");
    let k = format!("{s}token");
    let event_type = format!("{s}consumed");
    let rev = one(store, create(&k, b"join-token"), "create token").await;
    let results = spawn_each(20, |i| {
        let (store, k, event_type) = (store.clone(), k.clone(), event_type.clone());
        async move {
            store
                .commit(Txn {
                    ops: vec![delete(&k, Some(rev))],
                    audit: vec![event(&event_type, json!({ "by": i }))],
                })
                .await
        }
    })
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        wins, 1,
        "exactly one Delete may consume the token: {results:?}"
    );
    assert!(
        results.iter().all(|r| matches!(
            r,
            Ok(_) | Err(StoreError::NotFound(_)) | Err(StoreError::Conflict(_))
        )),
        "losers must get NotFound or Conflict: {results:?}"
    );
    let q = AuditQuery {
        event_type: Some(event_type),
        ..Default::default()
    };
    assert_eq!(
        query(store, q).await.len(),
        1,
        "only the winner's audit event is kept"
    );
    assert_eq!(get(store, &k).await, None, "token consumed");
}

/// 20 concurrent CAS Updates from one revision: exactly one wins, the rest `Conflict`.
pub async fn concurrent_update_single_winner(store: &Arc<dyn Store>) {
    let k = format!("{}k", scope("race-update"));
    let rev = one(store, create(&k, b"0"), "create").await;
    let results = spawn_each(20, |i| {
        let (store, k) = (store.clone(), k.clone());
        async move {
            store
                .commit(ops(vec![update(&k, format!("{i}").as_bytes(), Some(rev))]))
                .await
        }
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "one CAS winner: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))),
        "CAS losers must get Conflict: {results:?}"
    );
}

/// 96 concurrent txns, a third of which fail on their own ops (a duplicate Create, a stale
/// CAS, a Delete of an absent key, a multi-op txn whose last op conflicts): only those
/// fail, every other txn commits with its audit events, one chain. A backend that folds
/// concurrent txns into one database transaction must isolate them like this.
pub async fn failing_txns_leave_neighbours_committed(store: &Arc<dyn Store>) {
    let s = scope("neighbours");
    let taken = format!("{s}taken");
    let cas = format!("{s}cas");
    one(store, create(&taken, b"x"), "create taken").await;
    let cas_rev = one(store, create(&cas, b"0"), "create cas").await;
    let (count_before, _) = head(store).await;
    let event_type = format!("{s}event");
    let results = spawn_each(96, |i| {
        let (store, s, taken, cas) = (store.clone(), s.clone(), taken.clone(), cas.clone());
        let audit = vec![event(&event_type, json!({ "i": i }))];
        let stale = Some(cas_rev + 1_000_000);
        let ops = match i % 6 {
            0 => vec![create(&format!("{s}new{i}"), b"v")],
            1 => vec![create(&taken, b"dup")],
            2 => vec![update(&cas, b"x", stale)],
            3 => vec![delete(&format!("{s}absent{i}"), None)],
            4 => vec![
                put(&format!("{s}undone{i}"), b"v", None),
                update(&cas, b"y", stale),
            ],
            _ => vec![
                put(&format!("{s}a{i}"), b"v", None),
                put(&format!("{s}b{i}"), b"v", None),
            ],
        };
        async move { store.commit(Txn { ops, audit }).await }
    })
    .await;
    let mut revisions = Vec::new();
    let mut committed = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match (i % 6, r) {
            (0, Ok(revs)) if revs.len() == 1 => {
                assert!(get(store, &format!("{s}new{i}")).await.is_some(), "txn {i}");
            }
            (1, Err(StoreError::AlreadyExists(k))) => assert_eq!(k, &taken),
            (2 | 4, Err(StoreError::Conflict(k))) => assert_eq!(k, &cas),
            (3, Err(StoreError::NotFound(k))) => assert_eq!(k, &format!("{s}absent{i}")),
            (5, Ok(revs)) if revs.len() == 2 => {
                assert!(get(store, &format!("{s}b{i}")).await.is_some(), "txn {i}");
            }
            (_, other) => panic!("txn {i} (variant {}): unexpected {other:?}", i % 6),
        }
        if let Ok(revs) = r {
            revisions.extend(revs.iter().copied());
            committed.push(i as i64);
        }
        if i % 6 == 4 {
            assert_eq!(
                get(store, &format!("{s}undone{i}")).await,
                None,
                "the earlier op of a failed txn must be undone"
            );
        }
    }
    assert_eq!(
        get(store, &cas).await.map(|i| i.revision),
        Some(cas_rev),
        "stale CAS never applies"
    );
    let n = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        n,
        "every committed op has its own revision"
    );
    let q = AuditQuery {
        event_type: Some(event_type),
        ..Default::default()
    };
    let mut audited: Vec<i64> = query(store, q)
        .await
        .iter()
        .filter_map(|r| r.fields["i"].as_i64())
        .collect();
    audited.sort_unstable();
    assert_eq!(
        audited, committed,
        "exactly the committed txns' audit events are appended"
    );
    assert_eq!(
        head(store).await.0,
        count_before + committed.len() as i64,
        "one intact chain"
    );
}
