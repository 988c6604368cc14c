#![allow(static_mut_refs)]
//! The single writer: drains queued commits into one SQLite transaction (group commit).
//!
//! Per batch: `BEGIN IMMEDIATE`; each txn's ops run in order (inside a `SAVEPOINT` when
//! it has more than one op, so a failing later op can be undone); audit records of the
//! txns that succeeded get their seq/hash in order and are inserted with multi-row
//! INSERTs; the revision counter is saved; one `COMMIT` (one fsync) covers everyone.
//! Then watch events go out in commit order and every caller gets its reply.
//!
//! A failing op (`AlreadyExists`/`NotFound`/`Conflict`) fails only its own txn. A database
//! error anywhere fails the whole batch (SQLite may have rolled the transaction back on
//! its own, so nothing after it could be trusted); the in-memory counters are then
//! reloaded from the database before the next batch.

use sqlx::sqlite::SqliteQueryResult;
use sqlx::{AssertSqlSafe, Connection as _, Row as _, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{backend, now_ns, to_ns};
use crate::audit::{canonical_fields, format_time, hash_parts};
use crate::store::{Item, Op, Txn, WatchEvent};
use crate::{GENESIS_HASH, Result, StoreError};

/// Most txns folded into one database transaction.
const MAX_BATCH: usize = 512;
/// Rows per multi-row audit INSERT, largest first (a few fixed shapes keep the
/// prepared-statement cache small). 64 rows × 6 columns is far below SQLite's
/// bound-parameter limit.
const AUDIT_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Work for the writer.
pub(super) enum Request {
    Commit {
        txn: Txn,
        reply: oneshot::Sender<Result<Vec<i64>>>,
    },
    Purge {
        reply: oneshot::Sender<Result<usize>>,
    },
}

/// An audit row ready to insert.
struct AuditRow {
    seq: i64,
    time: String,
    event_type: String,
    fields: String,
    prev_hash: String,
    hash: String,
}

/// A reply held until the batch's COMMIT outcome is known.
enum Pending {
    Commit(oneshot::Sender<Result<Vec<i64>>>, Result<Vec<i64>>),
    Purge(oneshot::Sender<Result<usize>>, Result<usize>),
}

/// Why an op or txn failed.
enum Failure {
    /// The caller's own error; the rest of the batch proceeds.
    Txn(StoreError),
    /// A database error; the batch is abandoned.
    Batch(StoreError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Batch(backend("sqlite write", e))
    }
}

pub(super) struct Writer {
    conn: SqliteConnection,
    watch: broadcast::Sender<WatchEvent>,
    /// Last revision handed out (committed).
    revision: i64,
    /// Last audit seq and hash (committed).
    seq: i64,
    head: String,
    /// Set after a failed batch: reload the counters before the next one.
    stale: bool,
    /// SQL of the multi-row audit INSERT for each size in `AUDIT_CHUNKS`.
    audit_sql: Vec<(usize, String)>,
}

impl Writer {
    pub(super) async fn load(
        conn: SqliteConnection,
        watch: broadcast::Sender<WatchEvent>,
    ) -> Result<Writer> {
        let audit_sql = AUDIT_CHUNKS
            .iter()
            .map(|&n| {
                let rows = vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ");
                let sql = format!(
                    "INSERT INTO audit (seq, time, type, fields, prev_hash, hash) VALUES {rows}"
                );
                (n, sql)
            })
            .collect();
        let mut w = Writer {
            conn,
            watch,
            revision: 0,
            seq: 0,
            head: GENESIS_HASH.to_string(),
            stale: true,
            audit_sql,
        };
        w.reload().await?;
        Ok(w)
    }

    /// Reads the committed revision counter and audit head.
    async fn reload(&mut self) -> Result<()> {
        let revision: i64 = sqlx::query("SELECT value FROM meta WHERE name = 'revision'")
            .fetch_one(&mut self.conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| backend("loading the revision counter", e))?;
        let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut self.conn)
            .await
            .map_err(|e| backend("loading the audit head", e))?;
        let (seq, hash) = match head {
            Some(row) => (
                row.try_get(0).map_err(|e| backend("loading the audit head", e))?,
                row.try_get(1).map_err(|e| backend("loading the audit head", e))?,
            ),
            None => (0, GENESIS_HASH.to_string()),
        };
        self.revision = revision;
        self.seq = seq;
        self.head = hash;
        self.stale = false;
        Ok(())
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            self.process(&mut batch).await;
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the sqlite write connection");
        }
    }

    async fn process(&mut self, batch: &mut Vec<Request>) {
        let size = batch.len();
        let tb = std::time::Instant::now();
        let mut events = Vec::new();
        let mut pending = Vec::with_capacity(size);
        let outcome = self.apply_batch(batch, &mut events, &mut pending).await;
        unsafe {
            DBG_BATCHES += 1; DBG_TXNS += size as u64; DBG_TOTAL_US += tb.elapsed().as_micros() as u64;
            if DBG_BATCHES % 300 == 0 { eprintln!("batches {} avg size {:.1} avg total {}us avg commit {}us", DBG_BATCHES, DBG_TXNS as f64 / DBG_BATCHES as f64, DBG_TOTAL_US / DBG_BATCHES, DBG_COMMIT_US / DBG_BATCHES); }
        }
        match outcome {
            Ok((revision, seq, head)) => {
                self.revision = revision;
                self.seq = seq;
                self.head = head;
                for ev in events {
                    // No receivers is fine: nobody is watching.
                    let _ = self.watch.send(ev);
                }
                for p in pending {
                    match p {
                        Pending::Commit(reply, r) => {
                            let _ = reply.send(r);
                        }
                        Pending::Purge(reply, r) => {
                            let _ = reply.send(r);
                        }
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, txns = size, "sqlite batch failed; rolled back");
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                self.stale = true;
                let msg = err.to_string();
                let fail = || StoreError::Backend(format!("{msg}; nothing was committed"));
                // Requests not reached yet are still in `batch`; the rest are in `pending`.
                for p in pending {
                    match p {
                        Pending::Commit(reply, _) => {
                            let _ = reply.send(Err(fail()));
                        }
                        Pending::Purge(reply, _) => {
                            let _ = reply.send(Err(fail()));
                        }
                    }
                }
                for req in batch.drain(..) {
                    match req {
                        Request::Commit { reply, .. } => {
                            let _ = reply.send(Err(fail()));
                        }
                        Request::Purge { reply } => {
                            let _ = reply.send(Err(fail()));
                        }
                    }
                }
            }
        }
        batch.clear();
    }

    /// Runs one database transaction for `batch`. On success returns the new committed
    /// (revision, seq, head); replies are queued in `pending`, watch events in `events`.
    async fn apply_batch(
        &mut self,
        batch: &mut Vec<Request>,
        events: &mut Vec<WatchEvent>,
        pending: &mut Vec<Pending>,
    ) -> Result<(i64, i64, String)> {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await
            .map_err(|e| backend("starting a write transaction", e))?;
        if self.stale {
            self.reload().await?;
        }
        let now = now_ns();
        let start_revision = self.revision;
        let mut revision = self.revision;
        let mut seq = self.seq;
        let mut head = self.head.clone();
        let mut audit_rows = Vec::new();

        // Drain front to back so replies and events keep arrival order.
        let mut reqs = std::mem::take(batch).into_iter();
        while let Some(req) = reqs.next() {
            match req {
                Request::Commit { txn, reply } => {
                    let mark = events.len();
                    match self.apply_txn(&txn, now, &mut revision, events).await {
                        Ok(revs) => {
                            for ev in &txn.audit {
                                seq += 1;
                                let time = format_time(ev.time);
                                let fields = canonical_fields(&ev.fields);
                                let hash = hash_parts(&head, seq, &time, &ev.event_type, &fields);
                                audit_rows.push(AuditRow {
                                    seq,
                                    time,
                                    event_type: ev.event_type.clone(),
                                    fields,
                                    prev_hash: std::mem::replace(&mut head, hash.clone()),
                                    hash,
                                });
                            }
                            pending.push(Pending::Commit(reply, Ok(revs)));
                        }
                        Err(Failure::Txn(e)) => {
                            events.truncate(mark);
                            pending.push(Pending::Commit(reply, Err(e)));
                        }
                        Err(Failure::Batch(e)) => {
                            pending.push(Pending::Commit(reply, Err(StoreError::Backend(String::new()))));
                            *batch = reqs.collect();
                            return Err(e);
                        }
                    }
                }
                Request::Purge { reply } => match self.purge(now, events).await {
                    Ok(n) => pending.push(Pending::Purge(reply, Ok(n))),
                    Err(e) => {
                        pending.push(Pending::Purge(reply, Err(StoreError::Backend(String::new()))));
                        *batch = reqs.collect();
                        return Err(e);
                    }
                },
            }
        }

        self.insert_audit(&audit_rows).await?;
        if revision != start_revision {
            sqlx::query("UPDATE meta SET value = ?1 WHERE name = 'revision'")
                .bind(revision)
                .execute(&mut self.conn)
                .await
                .map_err(|e| backend("saving the revision counter", e))?;
        }
        let t0 = std::time::Instant::now();
        sqlx::query("COMMIT")
            .execute(&mut self.conn)
            .await
            .map_err(|e| backend("committing", e))?;
                unsafe { DBG_COMMIT_US += t0.elapsed().as_micros() as u64; }
        Ok((revision, seq, head))
    }

    /// Applies one txn's ops. On `Failure::Txn` nothing of the txn remains and
    /// `revision` is restored.
    async fn apply_txn(
        &mut self,
        txn: &Txn,
        now: i64,
        revision: &mut i64,
        events: &mut Vec<WatchEvent>,
    ) -> std::result::Result<Vec<i64>, Failure> {
        // A single statement is atomic by itself; only multi-op txns need a savepoint.
        let savepoint = txn.ops.len() > 1;
        if savepoint {
            sqlx::query("SAVEPOINT txn").execute(&mut self.conn).await?;
        }
        let before = *revision;
        let mut revs = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            match self.apply_op(op, now, revision, events).await {
                Ok(r) => revs.push(r),
                Err(Failure::Txn(e)) => {
                    if savepoint {
                        sqlx::query("ROLLBACK TO txn").execute(&mut self.conn).await?;
                        sqlx::query("RELEASE txn").execute(&mut self.conn).await?;
                    }
                    *revision = before;
                    return Err(Failure::Txn(e));
                }
                Err(batch) => return Err(batch),
            }
        }
        if savepoint {
            sqlx::query("RELEASE txn").execute(&mut self.conn).await?;
        }
        Ok(revs)
    }

    async fn apply_op(
        &mut self,
        op: &Op,
        now: i64,
        revision: &mut i64,
        events: &mut Vec<WatchEvent>,
    ) -> std::result::Result<i64, Failure> {
        let next = *revision + 1;
        let changed = match op {
            Op::Create {
                key,
                value,
                expires,
            } => {
                // Replaces an expired row in place; a live one makes the upsert a no-op.
                let r = sqlx::query(
                    "INSERT INTO kv (key, value, revision, expires_ns) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     revision = excluded.revision, expires_ns = excluded.expires_ns \
                     WHERE kv.expires_ns IS NOT NULL AND kv.expires_ns <= ?5",
                )
                .bind(key)
                .bind(value)
                .bind(next)
                .bind(expires.map(to_ns))
                .bind(now)
                .execute(&mut self.conn)
                .await?;
                if r.rows_affected() == 0 {
                    return Err(Failure::Txn(StoreError::AlreadyExists(key.clone())));
                }
                true
            }
            Op::Put {
                key,
                value,
                expires,
            } => {
                sqlx::query(
                    "INSERT INTO kv (key, value, revision, expires_ns) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     revision = excluded.revision, expires_ns = excluded.expires_ns",
                )
                .bind(key)
                .bind(value)
                .bind(next)
                .bind(expires.map(to_ns))
                .execute(&mut self.conn)
                .await?;
                true
            }
            Op::Update {
                key,
                value,
                expires,
                expected_revision,
            } => {
                let r = sqlx::query(
                    "UPDATE kv SET value = ?1, revision = ?2, expires_ns = ?3 \
                     WHERE key = ?4 AND (expires_ns IS NULL OR expires_ns > ?5) \
                     AND (?6 IS NULL OR revision = ?6)",
                )
                .bind(value)
                .bind(next)
                .bind(expires.map(to_ns))
                .bind(key)
                .bind(now)
                .bind(*expected_revision)
                .execute(&mut self.conn)
                .await?;
                self.check_cas(key, now, &r).await?;
                true
            }
            Op::Delete {
                key,
                expected_revision,
            } => {
                let r = sqlx::query(
                    "DELETE FROM kv WHERE key = ?1 AND (expires_ns IS NULL OR expires_ns > ?2) \
                     AND (?3 IS NULL OR revision = ?3)",
                )
                .bind(key)
                .bind(now)
                .bind(*expected_revision)
                .execute(&mut self.conn)
                .await?;
                self.check_cas(key, now, &r).await?;
                false
            }
        };
        if changed {
            *revision = next;
            if let Op::Create {
                key,
                value,
                expires,
            }
            | Op::Put {
                key,
                value,
                expires,
            }
            | Op::Update {
                key,
                value,
                expires,
                ..
            } = op
            {
                events.push(WatchEvent::Put(Item {
                    key: key.clone(),
                    value: value.clone(),
                    revision: next,
                    expires: *expires,
                }));
            }
            Ok(next)
        } else {
            events.push(WatchEvent::Delete {
                key: op.key().to_string(),
            });
            Ok(0)
        }
    }

    /// After a guarded UPDATE/DELETE: no row changed means the item is absent/expired
    /// (`NotFound`) or its revision differs (`Conflict`).
    async fn check_cas(
        &mut self,
        key: &str,
        now: i64,
        r: &SqliteQueryResult,
    ) -> std::result::Result<(), Failure> {
        if r.rows_affected() > 0 {
            return Ok(());
        }
        let live = sqlx::query(
            "SELECT 1 FROM kv WHERE key = ?1 AND (expires_ns IS NULL OR expires_ns > ?2)",
        )
        .bind(key)
        .bind(now)
        .fetch_optional(&mut self.conn)
        .await?;
        Err(Failure::Txn(match live {
            Some(_) => StoreError::Conflict(key.to_string()),
            None => StoreError::NotFound(key.to_string()),
        }))
    }

    async fn purge(&mut self, now: i64, events: &mut Vec<WatchEvent>) -> Result<usize> {
        let rows = sqlx::query(
            "DELETE FROM kv WHERE expires_ns IS NOT NULL AND expires_ns <= ?1 RETURNING key",
        )
        .bind(now)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| backend("purging expired items", e))?;
        for row in &rows {
            let key: String = row
                .try_get(0)
                .map_err(|e| backend("purging expired items", e))?;
            events.push(WatchEvent::Delete { key });
        }
        Ok(rows.len())
    }

    async fn insert_audit(&mut self, rows: &[AuditRow]) -> Result<()> {
        let mut rest = rows;
        while !rest.is_empty() {
            let Some((n, sql)) = self.audit_sql.iter().find(|(n, _)| *n <= rest.len()) else {
                break; // unreachable: the last chunk size is 1
            };
            let (chunk, tail) = rest.split_at(*n);
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for row in chunk {
                q = q
                    .bind(row.seq)
                    .bind(row.time.as_str())
                    .bind(row.event_type.as_str())
                    .bind(row.fields.as_str())
                    .bind(row.prev_hash.as_str())
                    .bind(row.hash.as_str());
            }
            q.execute(&mut self.conn)
                .await
                .map_err(|e| backend("appending to the audit log", e))?;
            rest = tail;
        }
        Ok(())
    }
}

static mut DBG_BATCHES: u64 = 0;
static mut DBG_TXNS: u64 = 0;
static mut DBG_TOTAL_US: u64 = 0;
static mut DBG_COMMIT_US: u64 = 0;
