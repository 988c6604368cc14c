//! The cluster's audit key, pinned in the store: every auth server sharing a store must
//! sign checkpoints with the same key, since agents pin the first key they see.

use std::path::Path;

use anyhow::{Context, bail};

use super::key::AuditKey;

/// Store key of the cluster's audit public key: every server sharing a store must sign
/// with the same key, since agents pin the first key they see.
const STORE_PIN: &str = "/cluster/audit_key";

/// The audit public key the store's cluster signs with, if one was recorded.
pub async fn store_pin(store: &dyn sigil_store::Store) -> anyhow::Result<Option<String>> {
    Ok(store
        .get(STORE_PIN)
        .await
        .context("reading the cluster's audit key")?
        .map(|i| String::from_utf8_lossy(&i.value).into_owned()))
}

/// Refuses to create a new audit key when the store's cluster already has one: the key
/// must be copied from a running server instead (unless `replace`: the key is lost).
pub fn require_copy_if_pinned(
    path: &Path,
    pinned: Option<&str>,
    replace: bool,
) -> anyhow::Result<()> {
    if let Some(p) = pinned
        && !replace
        && std::fs::symlink_metadata(path).is_err()
    {
        bail!(
            "this cluster's audit checkpoints are signed with {p}, and --audit-key {} does not \
             exist: every auth server of a cluster signs with the same key, so copy the audit \
             key file (mode 0600) from a running server to {} (or point --audit-key / \
             SIGIL_AUDIT_KEY_FILE at it). If the key is lost for good, start one server once \
             with --new-audit-key",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Records `key` as the cluster's audit key, or checks it against the one recorded;
/// `replace` records it over another (audited).
pub async fn pin_in_store(
    store: &dyn sigil_store::Store,
    key: &AuditKey,
    pinned: Option<String>,
    replace: bool,
    head_file: Option<&Path>,
) -> anyhow::Result<()> {
    if replace && pinned.as_deref() != Some(key.public_key.as_str()) {
        // The old key's checkpoints can never verify again: they leave the store (the
        // newest is kept in the event, inside the hash chain), or verification would
        // fail at every start and no checkpoint would be signed again.
        let old = store
            .list(super::checkpoint::PREFIX)
            .await
            .context("reading the stored audit checkpoints")?;
        let newest_old = old
            .iter()
            .filter_map(|i| serde_json::from_slice::<sigil_types::SignedCheckpoint>(&i.value).ok())
            .filter_map(|c| {
                sigil_types::Checkpoint::parse(&c.body)
                    .ok()
                    .map(|cp| (cp.seq, c))
            })
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, c)| c);
        let mut ops: Vec<sigil_store::Op> = old
            .iter()
            .map(|i| sigil_store::Op::Delete {
                key: i.key.clone(),
                expected_revision: Some(i.revision),
            })
            .collect();
        ops.push(sigil_store::Op::Put {
            key: STORE_PIN.into(),
            value: key.public_key.clone().into_bytes(),
            expires: None,
        });
        store
            .commit(sigil_store::Txn {
                ops,
                audit: vec![super::event(
                    super::AUDIT_KEY_REPLACED,
                    serde_json::json!({
                        "previous": pinned,
                        "key": key.public_key,
                        "previous_newest_checkpoint": newest_old,
                        "checkpoints_removed": old.len(),
                    }),
                )],
            })
            .await
            .context("recording the new audit key")?;
        if let Some(head) = head_file {
            match std::fs::remove_file(head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", head.display())),
            }
        }
        tracing::warn!(previous = ?pinned, key = %key.public_key,
            "the cluster's audit key was replaced (--new-audit-key): the old key's checkpoints were removed; stop every other auth server before this, and clear agents' audit-witness.json");
        return Ok(());
    }
    let recorded = match pinned {
        Some(p) => p,
        None => {
            let create = sigil_store::Txn {
                ops: vec![sigil_store::Op::Create {
                    key: STORE_PIN.into(),
                    value: key.public_key.clone().into_bytes(),
                    expires: None,
                }],
                audit: vec![],
            };
            match store.commit(create).await {
                Ok(_) => return Ok(()),
                // Another server recorded its key first: compare with that one.
                Err(sigil_store::StoreError::AlreadyExists(_)) => store_pin(store)
                    .await?
                    .context("the cluster's audit key vanished while being recorded")?,
                Err(e) => return Err(e).context("recording the cluster's audit key"),
            }
        }
    };
    if recorded != key.public_key {
        bail!(
            "--audit-key {} holds audit key {}, but this cluster's checkpoints are signed with \
             {recorded}: every auth server of a cluster signs with the same key (agents pin \
             it); copy the audit key file from a running server",
            key.path.display(),
            key.public_key
        );
    }
    Ok(())
}
