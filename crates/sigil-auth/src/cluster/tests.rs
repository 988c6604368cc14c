use sigil_pki::{CaPurpose, SoftwareKeyManager};
use sigil_store::{AuditQuery, Op, SqliteStore, Store, Txn};

use super::load_or_create;
use crate::keys;

/// A cluster created before the `kubernetes` purpose existed gets that CA at
/// its next start, audited once; the other CAs are left as they were.
#[tokio::test]
async fn a_missing_ca_purpose_is_created_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let km = SoftwareKeyManager;
    let (name, first) = load_or_create(&store, &km, Some("example.test"))
        .await
        .unwrap();
    let client_pin = first.client.signer.spki_pin();
    // As an older version left it: no kubernetes CA.
    store
        .commit(Txn {
            ops: vec![Op::Delete {
                key: keys::ca(CaPurpose::Kubernetes),
                expected_revision: None,
            }],
            audit: vec![],
        })
        .await
        .unwrap();
    let (again, cas) = load_or_create(&store, &km, None).await.unwrap();
    assert_eq!(again, name);
    assert_eq!(cas.kubernetes.signer.purpose(), CaPurpose::Kubernetes);
    assert_eq!(cas.client.signer.spki_pin(), client_pin, "others untouched");
    assert!(
        store
            .get(&keys::ca(CaPurpose::Kubernetes))
            .await
            .unwrap()
            .is_some()
    );
    let events = ca_created(&store).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fields["cas"], serde_json::json!(["kubernetes"]));
    // Nothing missing: nothing created, nothing audited.
    load_or_create(&store, &km, None).await.unwrap();
    assert_eq!(ca_created(&store).await.len(), 1);
}

async fn ca_created(store: &SqliteStore) -> Vec<sigil_store::AuditRecord> {
    let q = AuditQuery {
        event_type: Some(crate::audit::CA_CREATED.into()),
        ..Default::default()
    };
    store.audit_query(q).await.unwrap()
}
