//! Concurrency conformance tests: compare-and-swap under contention.

use std::sync::Arc;

use serde_json::json;

use super::{create, delete, event, get, one, ops, query, scope, update};
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
