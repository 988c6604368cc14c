//! Commits: one database transaction each, serialised across servers by the lock on
//! `meta.revision`. Every op writes its item and its change-feed row in one statement.

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row as _, Transaction};

use crate::audit::{canonical_fields, format_time, hash_parts};
use crate::sqlite::{backend, now_ns, to_ns};
use crate::store::{AuditRecord, Op, Txn};
use crate::{GENESIS_HASH, Result, StoreError};

/// The notification channel the change feed listens on; the payload is the new revision.
pub(super) const CHANNEL: &str = "sigil_changes";

/// Change-feed rows older than this are pruned by `purge_expired`. A server away from the
/// database for longer re-reads everything when it comes back.
const FEED_RETENTION_SECS: i64 = 15 * 60;

const LOCK_REVISION: &str = "SELECT value FROM meta WHERE name = 'revision' FOR UPDATE";

/// Live-row condition; `now` is the statement's parameter `$N` given by the caller.
fn live(n: u8) -> String {
    format!("(kv.expires_ns IS NULL OR kv.expires_ns > ${n})")
}

/// Appends the change row for what the CTE `w` wrote, returning one row iff it wrote.
const FEED_PUT: &str = "INSERT INTO changes (revision, key, value, expires_ns, deleted) \
     SELECT $3, key, $2, $4, false FROM w RETURNING revision";

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

/// Stores the new revision and notifies every server's feed follower (delivered at
/// commit, and only if it commits).
async fn finish(tx: &mut Transaction<'static, Postgres>, rev: i64) -> Result<()> {
    sqlx::query("UPDATE meta SET value = $1 WHERE name = 'revision'")
        .bind(rev)
        .execute(&mut **tx)
        .await
        .map_err(|e| backend("advancing the revision counter", e))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(rev.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| backend("notifying the change feed", e))?;
    Ok(())
}

/// Applies `txn` atomically; returns each op's revision (0 for deletes).
pub(super) async fn commit(pool: &PgPool, txn: &Txn) -> Result<Vec<i64>> {
    let (mut tx, mut rev) = begin(pool).await?;
    let now = now_ns();
    let mut out = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        rev += 1;
        match apply(&mut tx, op, rev, now).await? {
            Ok(r) => out.push(r),
            // Dropping `tx` rolls back; say so explicitly to free the lock at once.
            Err(op_error) => {
                let _ = tx.rollback().await;
                return Err(op_error);
            }
        }
    }
    if !txn.audit.is_empty() {
        append_audit(&mut tx, txn).await?;
    }
    if !txn.ops.is_empty() {
        finish(&mut tx, rev).await?;
    }
    tx.commit()
        .await
        .map_err(|e| backend("committing a transaction", e))?;
    Ok(out)
}

/// One op and its change row. Outer `Err`: the database failed; inner `Err`: the op's own
/// refusal (`AlreadyExists`, `NotFound`, `Conflict`).
async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    op: &Op,
    rev: i64,
    now: i64,
) -> Result<Result<i64>> {
    let key = op.key();
    let err = |e| backend(&format!("writing {key}"), e);
    let wrote = match op {
        Op::Create {
            key,
            value,
            expires,
        } => sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH w AS (INSERT INTO kv (key, value, revision, expires_ns) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             revision = EXCLUDED.revision, expires_ns = EXCLUDED.expires_ns \
             WHERE NOT {} RETURNING key) {FEED_PUT}",
            live(5)
        )))
        .bind(key)
        .bind(value)
        .bind(rev)
        .bind(expires.map(to_ns))
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .map_err(err)?,
        Op::Put {
            key,
            value,
            expires,
        } => sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH w AS (INSERT INTO kv (key, value, revision, expires_ns) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             revision = EXCLUDED.revision, expires_ns = EXCLUDED.expires_ns RETURNING key) \
             {FEED_PUT}"
        )))
        .bind(key)
        .bind(value)
        .bind(rev)
        .bind(expires.map(to_ns))
        .fetch_optional(&mut **tx)
        .await
        .map_err(err)?,
        Op::Update {
            key,
            value,
            expires,
            expected_revision,
        } => sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH w AS (UPDATE kv SET value = $2, revision = $3, expires_ns = $4 \
             WHERE kv.key = $1 AND ($5::BIGINT IS NULL OR kv.revision = $5) AND {} \
             RETURNING key) {FEED_PUT}",
            live(6)
        )))
        .bind(key)
        .bind(value)
        .bind(rev)
        .bind(expires.map(to_ns))
        .bind(*expected_revision)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .map_err(err)?,
        Op::Delete {
            key,
            expected_revision,
        } => sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH w AS (DELETE FROM kv WHERE kv.key = $1 \
             AND ($2::BIGINT IS NULL OR kv.revision = $2) AND {} RETURNING key) \
             INSERT INTO changes (revision, key, value, expires_ns, deleted) \
             SELECT $3, key, NULL, NULL, true FROM w RETURNING revision",
            live(4)
        )))
        .bind(key)
        .bind(*expected_revision)
        .bind(rev)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .map_err(err)?,
    };
    if wrote.is_some() {
        // Deletes are numbered too: watchers order them against puts from other servers.
        return Ok(Ok(rev));
    }
    Ok(Err(match op {
        Op::Create { .. } => StoreError::AlreadyExists(key.to_string()),
        Op::Put { .. } => {
            return Err(StoreError::Backend(format!(
                "writing {key}: the upsert reported no change"
            )));
        }
        Op::Update { .. } | Op::Delete { .. } => {
            let live: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM kv WHERE key = $1 AND (expires_ns IS NULL OR expires_ns > $2)",
            )
            .bind(key)
            .bind(now)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| backend(&format!("reading {key}"), e))?;
            match live {
                Some(_) => StoreError::Conflict(key.to_string()),
                None => StoreError::NotFound(key.to_string()),
            }
        }
    }))
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

/// Chains `txn`'s events onto the head. The revision lock is held, so the head read here
/// is the head this transaction commits after.
async fn append_audit(tx: &mut Transaction<'static, Postgres>, txn: &Txn) -> Result<()> {
    let (mut seq, mut head) = head_in(tx).await?;
    let mut cols = AuditColumns::default();
    for ev in &txn.audit {
        seq += 1;
        let time = format_time(ev.time);
        let fields = canonical_fields(&ev.fields);
        let hash = hash_parts(&head, seq, &time, &ev.event_type, &fields);
        cols.seq.push(seq);
        cols.time.push(time);
        cols.event_type.push(ev.event_type.clone());
        cols.fields.push(fields);
        cols.prev_hash
            .push(std::mem::replace(&mut head, hash.clone()));
        cols.hash.push(hash);
    }
    cols.insert(tx).await
}

/// Deletes expired items (each with a change row, so every server's followers see it) and
/// prunes change rows past the retention. Returns how many items were deleted.
pub(super) async fn purge(pool: &PgPool) -> Result<usize> {
    let (mut tx, rev) = begin(pool).await?;
    let purged: Vec<i64> = sqlx::query_scalar(
        "WITH d AS (DELETE FROM kv WHERE expires_ns IS NOT NULL AND expires_ns <= $1 \
         RETURNING key), \
         n AS (SELECT key, row_number() OVER (ORDER BY key) AS i FROM d) \
         INSERT INTO changes (revision, key, value, expires_ns, deleted) \
         SELECT $2 + i, key, NULL, NULL, true FROM n RETURNING revision",
    )
    .bind(now_ns())
    .bind(rev)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| backend("purging expired items", e))?;
    if !purged.is_empty() {
        finish(&mut tx, rev + purged.len() as i64).await?;
    }
    tx.commit()
        .await
        .map_err(|e| backend("committing the purge", e))?;
    // Outside the revision lock: pruning never stalls writers. A follower that had not
    // read the pruned rows yet sees the gap and resets.
    sqlx::query("DELETE FROM changes WHERE at < now() - make_interval(secs => $1)")
        .bind(FEED_RETENTION_SECS as f64)
        .execute(pool)
        .await
        .map_err(|e| backend("pruning the change feed", e))?;
    Ok(purged.len())
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
