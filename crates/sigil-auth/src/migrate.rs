//! `sigil auth migrate`: moves a stopped cluster from its SQLite file to PostgreSQL.
//!
//! Items are copied as they are (their revisions are the target's own: revisions are
//! compare-and-swap tokens, not data), the audit log record by record with its seqs and
//! hashes unchanged, so signed checkpoints, `audit-head.json` and every agent's witness
//! still match. A `cluster.migrated` event then continues the chain on the target.
//!
//! The first write claims the empty target: one transaction creates the cluster
//! record (so a server starting there cannot create a cluster of its own: its create
//! conflicts) and the [`keys::MIGRATION`] marker, which makes a server starting there
//! refuse ([`refuse_if_migrating`]) until the last transaction removes it. A failed
//! migration leaves the marker: drop and re-create the target and run it again.

use std::path::Path;

use anyhow::{Context, bail};
use sigil_store::{AuditQuery, AuditVerification, Op, PostgresStore, SqliteStore, Store, Txn};

use crate::{LOCK_FILE, audit, keys};

/// Written into the source data dir after a migration; a SQLite start there refuses.
pub const MIGRATED_MARKER: &str = "MIGRATED";

/// Items per target transaction.
const ITEMS_PER_TXN: usize = 500;
/// Audit records read and appended per round.
const AUDIT_PAGE: usize = 10_000;

/// Copies the SQLite store at `from` into the empty PostgreSQL database at `to`.
/// Returns a summary for the operator.
pub async fn migrate(from: &Path, to: &str) -> anyhow::Result<String> {
    if !from.is_file() {
        bail!(
            "--from {}: no such database file (the sigil.db in the auth server's data dir)",
            from.display()
        );
    }
    // The source server must be stopped: it holds this lock while it runs.
    let dir = from.parent().unwrap_or(Path::new("."));
    let _lock = match sigil_fs::SafeDir::open(dir, "the source data dir")? {
        Some(d) => Some(d.lock(LOCK_FILE).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}: an auth server is running on {}; stop it before migrating",
                dir.display()
            )
        })?),
        None => None,
    };
    let source = SqliteStore::open(from)
        .await
        .with_context(|| format!("opening {}", from.display()))?;
    let (count, head) = match source.audit_verify().await? {
        AuditVerification::Intact { count, head_hash } => (count, head_hash),
        AuditVerification::Broken { seq, reason } => bail!(
            "the source's audit log does not verify at seq {seq} ({reason}): \
             run `sigil audit verify` and resolve that before migrating"
        ),
    };
    let target = PostgresStore::connect(to)
        .await
        .with_context(|| format!("opening {}", sigil_store::redacted_url(to)))?;
    let where_to = target.target().to_string();
    let not_empty = || {
        anyhow::anyhow!(
            "{where_to} is not empty: migrate only into a new database (CREATE DATABASE …), \
             never over a running cluster"
        )
    };
    if !target.list("").await?.is_empty() || target.audit_head().await?.0 != 0 {
        return Err(not_empty());
    }
    let Some(cluster) = source.get(keys::CLUSTER).await? else {
        bail!(
            "{}: no cluster record ({}): is this an auth server's sigil.db?",
            from.display(),
            keys::CLUSTER
        );
    };
    // The claim: conditional creates, so a server that created a cluster there
    // since the check above makes this fail, and one starting from now on refuses.
    let claim = Txn {
        ops: vec![
            Op::Create {
                key: keys::CLUSTER.to_string(),
                value: cluster.value.clone(),
                expires: cluster.expires,
            },
            Op::Create {
                key: keys::MIGRATION.to_string(),
                value: serde_json::to_vec(&serde_json::json!({
                    "from": from.display().to_string(),
                    "started": time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)?,
                }))?,
                expires: None,
            },
        ],
        audit: vec![],
    };
    match target.commit(claim).await {
        Ok(_) => {}
        Err(sigil_store::StoreError::AlreadyExists(_)) => return Err(not_empty()),
        Err(e) => return Err(e).context("claiming the target"),
    }

    let mut after = 0;
    loop {
        let page = source
            .audit_query(AuditQuery {
                after_seq: Some(after),
                limit: Some(AUDIT_PAGE),
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        target
            .import_audit(&page)
            .await
            .context("copying the audit log")?;
    }
    let mut items = source.list("").await?;
    // Copied with the claim.
    items.retain(|i| i.key != keys::CLUSTER);
    for chunk in items.chunks(ITEMS_PER_TXN) {
        let ops = chunk
            .iter()
            .map(|i| Op::Create {
                key: i.key.clone(),
                value: i.value.clone(),
                expires: i.expires,
            })
            .collect();
        target
            .commit(Txn { ops, audit: vec![] })
            .await
            .context("copying items")?;
    }
    match target.audit_verify().await? {
        AuditVerification::Intact {
            count: c,
            head_hash,
        } if c == count && head_hash == head => {}
        other => bail!("the copied audit log does not match the source: {other:?}"),
    }
    target
        .commit(Txn {
            ops: vec![Op::Delete {
                key: keys::MIGRATION.to_string(),
                expected_revision: None,
            }],
            audit: vec![audit::event(
                audit::CLUSTER_MIGRATED,
                serde_json::json!({
                    "from": from.display().to_string(),
                    "to": where_to,
                    "items": items.len() + 1,
                    "events": count,
                    "head": head,
                }),
            )],
        })
        .await?;
    source.close().await;
    target.close().await;
    // Starting this data dir on SQLite again would run a second, diverging copy of
    // the cluster (tokens spent since would work again, new locks would be missing).
    let marker = dir.join(MIGRATED_MARKER);
    std::fs::write(
        &marker,
        format!("migrated to {where_to} by `sigil auth migrate`; start with --store\n"),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    Ok(format!(
        "migrated {} items and {count} audit events (head {count}:{head}) from {} to {where_to}; \
         start each auth server with --store (or SIGIL_STORE) and its own --data-dir holding \
         the same audit key",
        items.len() + 1,
        from.display()
    ))
}

/// A server starting on a store that `sigil auth migrate` is copying into (or
/// failed to) must not serve it: the copy is incomplete.
pub async fn refuse_if_migrating(store: &dyn Store) -> anyhow::Result<()> {
    let Some(item) = store.get(keys::MIGRATION).await? else {
        return Ok(());
    };
    let what: serde_json::Value = serde_json::from_slice(&item.value).unwrap_or_default();
    bail!(
        "`sigil auth migrate` is copying a cluster into this database \
         (from {}, started {}): start the auth servers once it has finished; \
         if it failed, drop and re-create the database and run it again",
        what["from"].as_str().unwrap_or("?"),
        what["started"].as_str().unwrap_or("?"),
    )
}
