//! What the writer does not: the audit head, pruning the change feed, and importing an
//! audit log (its own transaction, under the same `meta.revision` lock as every batch).

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row as _, Transaction};

use crate::audit::{canonical_fields, format_time};
use crate::sqlite::backend;
use crate::store::AuditRecord;
use crate::{GENESIS_HASH, Result, StoreError};

/// The notification channel the change feed listens on; the payload is the new revision.
pub(super) const CHANNEL: &str = "sigil_changes";

/// Change-feed rows older than this are pruned by `purge_expired`. A server away from the
/// database for longer re-reads everything when it comes back.
const FEED_RETENTION_SECS: i64 = 15 * 60;

const LOCK_REVISION: &str = "SELECT value FROM meta WHERE name = 'revision' FOR UPDATE";

async fn begin(pool: &PgPool) -> Result<(Transaction<'static, Postgres>, i64)> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| backend("starting a transaction", e))?;
    let rev: i64 = sqlx::query_scalar(LOCK_REVISION)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| backend("locking the revision counter", e))?;
    Ok((tx, rev))
}

async fn head_in(tx: &mut Transaction<'static, Postgres>) -> Result<(i64, String)> {
    let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| backend("reading the audit head", e))?;
    head_from(row)
}

fn head_from(row: Option<sqlx::postgres::PgRow>) -> Result<(i64, String)> {
    match row {
        Some(row) => Ok((
            row.try_get(0)
                .map_err(|e| backend("reading the audit head", e))?,
            row.try_get(1)
                .map_err(|e| backend("reading the audit head", e))?,
        )),
        None => Ok((0, GENESIS_HASH.to_string())),
    }
}

/// The newest committed audit record's `(seq, hash)`.
pub(super) async fn audit_head(pool: &PgPool) -> Result<(i64, String)> {
    let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(pool)
        .await
        .map_err(|e| backend("reading the audit head", e))?;
    head_from(row)
}

/// Audit rows as column arrays, for one `INSERT … SELECT * FROM UNNEST(…)`.
#[derive(Default)]
struct AuditColumns {
    seq: Vec<i64>,
    time: Vec<String>,
    event_type: Vec<String>,
    fields: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

impl AuditColumns {
    async fn insert(self, tx: &mut Transaction<'static, Postgres>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (seq, time, type, fields, prev_hash, hash) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::TEXT[], $6::TEXT[])",
        )
        .bind(self.seq)
        .bind(self.time)
        .bind(self.event_type)
        .bind(self.fields)
        .bind(self.prev_hash)
        .bind(self.hash)
        .execute(&mut **tx)
        .await
        .map_err(|e| backend("appending to the audit log", e))?;
        Ok(())
    }
}

/// Prunes change rows past the retention. Runs outside the revision lock, so pruning
/// never stalls writers; a follower that had not read the pruned rows yet sees the gap
/// and resets.
pub(super) async fn prune(pool: &PgPool) -> Result<()> {
    sqlx::query("DELETE FROM changes WHERE at < now() - make_interval(secs => $1)")
        .bind(FEED_RETENTION_SECS as f64)
        .execute(pool)
        .await
        .map_err(|e| backend("pruning the change feed", e))?;
    Ok(())
}

/// Appends records verbatim (seq, time, fields, hashes) where they link onto the current
/// head: `records[0]` must follow it, each record the one before. The hashes themselves
/// are checked by `audit_verify` afterwards.
pub(super) async fn import_audit(pool: &PgPool, records: &[AuditRecord]) -> Result<()> {
    let (mut tx, _) = begin(pool).await?;
    let (mut expected_seq, mut expected_prev) = head_in(&mut tx).await?;
    for chunk in records.chunks(1000) {
        let mut cols = AuditColumns::default();
        for r in chunk {
            expected_seq += 1;
            if r.seq != expected_seq || r.prev_hash != expected_prev {
                return Err(StoreError::Backend(format!(
                    "audit record {} does not follow record {} of the target's log \
                     (import only into a new database, in order)",
                    r.seq,
                    expected_seq - 1
                )));
            }
            expected_prev = r.hash.clone();
            cols.seq.push(r.seq);
            cols.time.push(format_time(r.time));
            cols.event_type.push(r.event_type.clone());
            cols.fields.push(canonical_fields(&r.fields));
            cols.prev_hash.push(r.prev_hash.clone());
            cols.hash.push(r.hash.clone());
        }
        cols.insert(&mut tx).await?;
    }
    tx.commit()
        .await
        .map_err(|e| backend("committing the audit import", e))?;
    Ok(())
}
