//! Audit-log conformance tests.

use std::sync::Arc;

use serde_json::json;

use super::{event, head, put, query, scope};
use crate::{AuditQuery, GENESIS_HASH, NewAuditEvent, Store, Txn, audit_hash};

/// Records chain from the previous head, hash per [`audit_hash`], and verify as intact.
pub async fn audit_chain(store: &Arc<dyn Store>) {
    let s = scope("audit");
    let (count, head_hash) = head(store).await;
    let t0 = time::macros::datetime!(2031-02-03 04:05:06.123456789 +02:00);
    let events = vec![
        NewAuditEvent {
            time: t0,
            event_type: format!("{s}one"),
            fields: json!({"z": 1, "a": {"y": [1, 2, {"c": null, "b": true}], "x": "é\"\n"}, "f": 0.1}),
        },
        NewAuditEvent {
            time: t0 + time::Duration::nanoseconds(1),
            event_type: format!("{s}two"),
            fields: json!({}),
        },
    ];
    store
        .commit(Txn {
            ops: vec![],
            audit: events.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("audit-only txn: {e}"));
    let third = event(&format!("{s}three"), json!({"node": "n1"}));
    store
        .commit(Txn {
            ops: vec![put(&format!("{s}k"), b"v", None)],
            audit: vec![third.clone()],
        })
        .await
        .unwrap_or_else(|e| panic!("txn with audit: {e}"));

    let records = query(
        store,
        AuditQuery {
            after_seq: Some(count),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(records.len(), 3, "three records appended after seq {count}");
    let mut prev = if count == 0 {
        GENESIS_HASH.to_string()
    } else {
        head_hash
    };
    for (i, (rec, ev)) in records
        .iter()
        .zip(events.iter().chain([&third]))
        .enumerate()
    {
        assert_eq!(rec.seq, count + 1 + i as i64, "seqs are consecutive");
        assert_eq!(rec.event_type, ev.event_type);
        assert_eq!(rec.fields, ev.fields, "fields must round-trip");
        assert_eq!(rec.time, ev.time, "time must round-trip to the nanosecond");
        assert_eq!(
            rec.prev_hash, prev,
            "seq {} must link to the previous hash",
            rec.seq
        );
        let expect = audit_hash(&prev, rec.seq, rec.time, &rec.event_type, &rec.fields);
        assert_eq!(
            rec.hash, expect,
            "seq {} hash must follow audit_hash",
            rec.seq
        );
        prev = rec.hash.clone();
    }
    assert_eq!(
        head(store).await,
        (count + 3, prev.clone()),
        "verify must count every record and report the last hash"
    );
    assert_eq!(
        store
            .audit_head()
            .await
            .unwrap_or_else(|e| panic!("audit_head: {e}")),
        (count + 3, prev),
        "audit_head must report the newest record's seq and hash"
    );
}

/// `audit_query` filters by type, time and seq, limits, and returns ascending seq.
pub async fn audit_query_filters(store: &Arc<dyn Store>) {
    let s = scope("query");
    let (count, _) = head(store).await;
    let t0 = time::macros::datetime!(2100-01-01 00:00:00 UTC);
    let (ta, tb) = (format!("{s}a"), format!("{s}b"));
    let evs: Vec<NewAuditEvent> = (0..6)
        .map(|i| NewAuditEvent {
            time: t0 + time::Duration::hours(i),
            event_type: if i % 2 == 0 { ta.clone() } else { tb.clone() },
            fields: json!({ "i": i }),
        })
        .collect();
    store
        .commit(Txn {
            ops: vec![],
            audit: evs,
        })
        .await
        .unwrap_or_else(|e| panic!("seeding audit: {e}"));
    let idx = |recs: Vec<crate::AuditRecord>| -> Vec<i64> {
        recs.iter()
            .map(|r| r.fields["i"].as_i64().unwrap_or(-1))
            .collect()
    };
    let mine = AuditQuery {
        after_seq: Some(count),
        ..Default::default()
    };
    assert_eq!(
        idx(query(store, mine.clone()).await),
        vec![0, 1, 2, 3, 4, 5],
        "ascending seq"
    );
    let by_type = AuditQuery {
        event_type: Some(ta.clone()),
        ..Default::default()
    };
    assert_eq!(
        idx(query(store, by_type).await),
        vec![0, 2, 4],
        "event_type filter"
    );
    let since = AuditQuery {
        since: Some(t0 + time::Duration::hours(3)),
        ..mine.clone()
    };
    assert_eq!(
        idx(query(store, since).await),
        vec![3, 4, 5],
        "since is inclusive"
    );
    let since_offset = AuditQuery {
        since: Some((t0 + time::Duration::hours(3)).to_offset(time::macros::offset!(-05:00))),
        event_type: Some(tb.clone()),
        ..mine.clone()
    };
    assert_eq!(
        idx(query(store, since_offset).await),
        vec![3, 5],
        "since with an offset and type"
    );
    let limited = AuditQuery {
        limit: Some(2),
        ..mine.clone()
    };
    let page = query(store, limited).await;
    assert_eq!(idx(page.clone()), vec![0, 1], "limit keeps the lowest seqs");
    let next = AuditQuery {
        after_seq: page.last().map(|r| r.seq),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(idx(query(store, next).await), vec![2, 3], "after_seq pages");
    let none = AuditQuery {
        event_type: Some(format!("{s}none")),
        ..Default::default()
    };
    assert!(
        query(store, none).await.is_empty(),
        "unknown type matches nothing"
    );
}
