//! Conformance tests for reading and purging kinds that grow with the fleet:
//! paged lists, counts and purges in bounded batches.

use std::sync::Arc;

use time::OffsetDateTime;

use super::{ops, put, scope};
use crate::{Item, PURGE_BATCH, Store};

/// `list_page` walks a prefix in key order, page by page, without repeats or gaps
/// (also when items change between pages); `count` agrees with it.
pub async fn list_pages_and_count(store: &Arc<dyn Store>) {
    let s = scope("page");
    let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let mut txn_ops: Vec<_> = (0..25)
        .map(|i| put(&format!("{s}p/{i:03}"), b"v", None))
        .collect();
    txn_ops.push(put(&format!("{s}p/expired"), b"gone", Some(past)));
    txn_ops.push(put(&format!("{s}q/outside"), b"out", None));
    store
        .commit(ops(txn_ops))
        .await
        .unwrap_or_else(|e| panic!("seeding paging test: {e}"));
    let prefix = format!("{s}p/");
    assert_eq!(
        store
            .count(&prefix)
            .await
            .unwrap_or_else(|e| panic!("count: {e}")),
        25,
        "count must include live keys under the prefix only"
    );
    assert_eq!(
        store
            .count(&format!("{s}none/"))
            .await
            .unwrap_or_else(|e| panic!("count: {e}")),
        0
    );

    count_by_expiry(store, &s).await;

    let page = |after: String| {
        let prefix = prefix.clone();
        async move {
            store
                .list_page(&prefix, &after, 10)
                .await
                .unwrap_or_else(|e| panic!("list_page: {e}"))
        }
    };
    let keys = |items: &[Item]| -> Vec<String> {
        items
            .iter()
            .map(|i| i.key[prefix.len()..].to_string())
            .collect()
    };
    let first = page(String::new()).await;
    assert_eq!(
        keys(&first),
        (0..10).map(|i| format!("{i:03}")).collect::<Vec<_>>()
    );
    // A key inserted behind the cursor and one ahead of it: the walk sees the
    // one ahead and never repeats what it already returned.
    store
        .commit(ops(vec![
            put(&format!("{s}p/004a"), b"behind", None),
            put(&format!("{s}p/015a"), b"ahead", None),
        ]))
        .await
        .unwrap_or_else(|e| panic!("insert between pages: {e}"));
    let last = first.last().map(|i| i.key.clone()).unwrap_or_default();
    let second = page(last).await;
    assert_eq!(
        keys(&second)[0],
        "010",
        "the next page starts right after the cursor"
    );
    let mut all = keys(&first);
    let mut cursor = second.last().map(|i| i.key.clone()).unwrap_or_default();
    all.extend(keys(&second));
    loop {
        let next = page(cursor.clone()).await;
        if next.is_empty() {
            break;
        }
        assert!(next.len() <= 10, "a page holds at most `limit` items");
        cursor = next.last().map(|i| i.key.clone()).unwrap_or_default();
        all.extend(keys(&next));
    }
    let mut want: Vec<String> = (0..25).map(|i| format!("{i:03}")).collect();
    want.push("015a".into());
    want.sort();
    assert_eq!(
        all, want,
        "pages must cover the prefix in order, expired items hidden"
    );
    let listed_keys = store
        .list_keys(&prefix, "", usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("list_keys: {e}"));
    assert_eq!(
        listed_keys,
        store
            .list(&prefix)
            .await
            .unwrap_or_else(|e| panic!("list: {e}"))
            .into_iter()
            .map(|i| i.key)
            .collect::<Vec<_>>(),
        "list_keys names the same items as list"
    );
    let after_ten = store
        .list_keys(&prefix, &format!("{prefix}009"), 2)
        .await
        .unwrap_or_else(|e| panic!("list_keys: {e}"));
    assert_eq!(
        after_ten,
        vec![format!("{prefix}010"), format!("{prefix}011")]
    );
    assert!(
        store
            .list_page(&prefix, "", 0)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "limit 0 returns nothing"
    );
}

/// `purge_expired` deletes at most [`PURGE_BATCH`] items per call, and repeated
/// calls remove every expired item.
pub async fn purge_in_batches(store: &Arc<dyn Store>) {
    let s = scope("purge");
    let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let n = PURGE_BATCH + 5;
    let txn_ops: Vec<_> = (0..n)
        .map(|i| put(&format!("{s}{i:05}"), b"x", Some(past)))
        .collect();
    store
        .commit(ops(txn_ops))
        .await
        .unwrap_or_else(|e| panic!("seeding purge test: {e}"));
    store
        .commit(ops(vec![put(&format!("{s}live"), b"keep", None)]))
        .await
        .unwrap_or_else(|e| panic!("seeding a live item: {e}"));
    let first = store
        .purge_expired()
        .await
        .unwrap_or_else(|e| panic!("purge_expired: {e}"));
    assert_eq!(
        first, PURGE_BATCH,
        "one call deletes one full batch, no more"
    );
    let mut rounds = 1;
    while store
        .purge_expired()
        .await
        .unwrap_or_else(|e| panic!("purge_expired: {e}"))
        == PURGE_BATCH
    {
        rounds += 1;
        assert!(rounds < 100, "purging never finished");
    }
    let left = store
        .list_page(&s, "", usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("list: {e}"));
    assert_eq!(left.len(), 1, "only the live item remains");
    // Expired items are invisible anyway; the raw row count shows the purge.
    assert_eq!(store.count(&s).await.unwrap_or_else(|e| panic!("{e}")), 1);
}

/// `count_expiring_before` counts live items under the prefix whose expiry is
/// before the bound: not the expired, not those without an expiry, not those
/// expiring later, not those under another prefix.
async fn count_by_expiry(store: &Arc<dyn Store>, s: &str) {
    let now = OffsetDateTime::now_utc();
    let soon = now + time::Duration::hours(1);
    let later = now + time::Duration::days(30);
    store
        .commit(ops(vec![
            put(&format!("{s}e/soon1"), b"v", Some(soon)),
            put(&format!("{s}e/soon2"), b"v", Some(soon)),
            put(&format!("{s}e/later"), b"v", Some(later)),
            put(&format!("{s}e/never"), b"v", None),
            put(
                &format!("{s}e/gone"),
                b"v",
                Some(now - time::Duration::seconds(1)),
            ),
            put(&format!("{s}f/soon"), b"v", Some(soon)),
        ]))
        .await
        .unwrap_or_else(|e| panic!("seeding expiry count: {e}"));
    let count = |before: OffsetDateTime| async move {
        store
            .count_expiring_before(&format!("{s}e/"), before)
            .await
            .unwrap_or_else(|e| panic!("count_expiring_before: {e}"))
    };
    assert_eq!(count(now + time::Duration::days(1)).await, 2);
    assert_eq!(count(now + time::Duration::days(60)).await, 3);
    assert_eq!(count(now).await, 0);
    // The whole scope: the other prefix's item counts too.
    assert_eq!(
        store
            .count_expiring_before(s, now + time::Duration::days(1))
            .await
            .unwrap_or_else(|e| panic!("count_expiring_before: {e}")),
        3
    );
}
