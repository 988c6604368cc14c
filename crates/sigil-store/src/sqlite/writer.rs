//! The single writer: drains queued commits into one SQLite transaction (group commit).
//!
//! Per batch: `BEGIN IMMEDIATE`; the txns' ops run in arrival order — runs of single-op
//! txns of one kind as bulk statements (see `ops`), txns with several ops one by one inside
//! a `SAVEPOINT` so a failing later op can be undone; the audit events of the txns that
//! succeeded get their seq/hash in order and go in with multi-row INSERTs; the revision
//! counter is saved; one `COMMIT` (one fsync) covers everyone. Then watch events go out in
//! commit order and every caller gets its reply.
//!
//! A failing op (`AlreadyExists`/`NotFound`/`Conflict`) fails only its own txn. A database
//! error anywhere fails the whole batch (SQLite may have rolled the transaction back on
//! its own, so nothing after it could be trusted); the in-memory counters are then
//! reloaded from the database before the next batch.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, Connection as _, Row as _, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::backend;
use super::now_ns;
use super::ops::{CHUNKS, Kind, OpSql, apply_run};
use crate::audit::{canonical_fields, format_time, hash_parts};
use crate::store::{Op, Txn, WatchEvent};
use crate::{GENESIS_HASH, Result, StoreError};

/// Most txns folded into one database transaction.
const MAX_BATCH: usize = 512;
/// Times the writer lets callers that were just answered queue their next txn before it
/// starts a smaller batch (each batch costs an fsync, so fuller batches are cheaper).
const GATHER_YIELDS: usize = 4;

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

/// What a request gets once the batch has committed.
enum Outcome {
    Commit(Result<Vec<i64>>),
    Purge(usize),
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

/// Everything a batch produced, applied to the writer only after `COMMIT` succeeds.
struct Applied {
    outcomes: Vec<Outcome>,
    events: Vec<WatchEvent>,
    revision: i64,
    seq: i64,
    head: String,
}

/// The audit chain head while a batch is being built.
struct Chain {
    seq: i64,
    head: String,
    rows: Vec<AuditRow>,
}

impl Chain {
    fn append(&mut self, txn: &Txn) {
        for ev in &txn.audit {
            self.seq += 1;
            let time = format_time(ev.time);
            let fields = canonical_fields(&ev.fields);
            let hash = hash_parts(&self.head, self.seq, &time, &ev.event_type, &fields);
            let prev_hash = std::mem::replace(&mut self.head, hash.clone());
            self.rows.push(AuditRow {
                seq: self.seq,
                time,
                event_type: ev.event_type.clone(),
                fields,
                prev_hash,
                hash,
            });
        }
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
    op_sql: OpSql,
    /// SQL of the multi-row audit INSERT for each size in `CHUNKS`.
    audit_sql: Vec<(usize, String)>,
    /// What `Store::health` reports: the last batch failed (see `write_health`).
    writes: std::sync::Arc<super::WriteHealth>,
}

impl Writer {
    pub(super) async fn load(
        conn: SqliteConnection,
        watch: broadcast::Sender<WatchEvent>,
        writes: std::sync::Arc<super::WriteHealth>,
    ) -> Result<Writer> {
        let audit_sql = CHUNKS
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
            op_sql: OpSql::new(),
            audit_sql,
            writes,
        };
        w.reload().await?;
        Ok(w)
    }

    /// Reads the committed revision counter and audit head.
    async fn reload(&mut self) -> Result<()> {
        let err = |e| backend("loading the revision counter and audit head", e);
        let revision: i64 = sqlx::query("SELECT value FROM meta WHERE name = 'revision'")
            .fetch_one(&mut self.conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut self.conn)
            .await
            .map_err(err)?;
        let (seq, hash) = match head {
            Some(row) => (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?),
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
        let mut last_size = 0;
        while let Some(first) = rx.recv().await {
            batch.push(first);
            drain(&mut rx, &mut batch);
            // Callers answered by the last batch are usually about to send again; give
            // them a moment so they share the next fsync instead of waiting for another.
            for _ in 0..GATHER_YIELDS {
                if batch.len() >= last_size || batch.len() >= MAX_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
                drain(&mut rx, &mut batch);
            }
            last_size = batch.len();
            self.process(&mut batch).await;
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the sqlite write connection");
        }
    }

    async fn process(&mut self, batch: &mut Vec<Request>) {
        match self.apply_batch(batch).await {
            Ok(applied) => {
                self.writes.succeeded();
                self.revision = applied.revision;
                self.seq = applied.seq;
                self.head = applied.head;
                for ev in applied.events {
                    // An error only means nobody is watching.
                    let _ = self.watch.send(ev);
                }
                for (req, outcome) in batch.drain(..).zip(applied.outcomes) {
                    match (req, outcome) {
                        (Request::Commit { reply, .. }, Outcome::Commit(r)) => {
                            let _ = reply.send(r);
                        }
                        (Request::Purge { reply }, Outcome::Purge(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        (Request::Commit { reply, .. }, Outcome::Purge(_)) => {
                            let _ = reply
                                .send(Err(StoreError::Backend("internal: reply mismatch".into())));
                        }
                        (Request::Purge { reply }, Outcome::Commit(_)) => {
                            let _ = reply
                                .send(Err(StoreError::Backend("internal: reply mismatch".into())));
                        }
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, txns = batch.len(), "sqlite write batch failed; rolled back");
                self.writes.failed();
                // Fails harmlessly if SQLite already rolled back on its own.
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                self.stale = true;
                let fail = || StoreError::Backend(format!("{err}; nothing was committed"));
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
    }

    /// Runs one database transaction for `batch`.
    async fn apply_batch(&mut self, batch: &[Request]) -> Result<Applied> {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await
            .map_err(|e| backend("starting a write transaction", e))?;
        if self.stale {
            self.reload().await?;
        }
        let now = now_ns();
        let mut revision = self.revision;
        let mut chain = Chain {
            seq: self.seq,
            head: self.head.clone(),
            rows: Vec::new(),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = Vec::new();

        let mut i = 0;
        while i < batch.len() {
            let txn = match &batch[i] {
                Request::Purge { .. } => {
                    outcomes.push(Outcome::Purge(self.purge(now, &mut events).await?));
                    i += 1;
                    continue;
                }
                Request::Commit { txn, .. } => txn,
            };
            if txn.ops.len() != 1 {
                let r = self
                    .apply_multi(txn, now, &mut revision, &mut events)
                    .await?;
                if r.is_ok() {
                    chain.append(txn);
                }
                outcomes.push(Outcome::Commit(r));
                i += 1;
                continue;
            }
            // A run of single-op txns of one kind on distinct keys, applied in bulk.
            let kind = Kind::of(&txn.ops[0]);
            let mut keys = HashSet::new();
            let run: Vec<&Txn> = batch[i..]
                .iter()
                .map_while(|req| match req {
                    Request::Commit { txn, .. }
                        if txn.ops.len() == 1
                            && Kind::of(&txn.ops[0]) == kind
                            && keys.insert(txn.ops[0].key()) =>
                    {
                        Some(txn)
                    }
                    _ => None,
                })
                .collect();
            let ops: Vec<&Op> = run.iter().map(|t| &t.ops[0]).collect();
            let results =
                apply_run(&mut self.conn, &self.op_sql, kind, &ops, now, &mut revision).await?;
            for (txn, r) in run.iter().zip(results) {
                if let Ok(rev) = r {
                    events.push(txn.ops[0].committed(rev));
                    chain.append(txn);
                }
                outcomes.push(Outcome::Commit(r.map(|rev| vec![rev])));
            }
            i += run.len();
        }

        self.insert_audit(&chain.rows).await?;
        if revision != self.revision {
            sqlx::query("UPDATE meta SET value = ?1 WHERE name = 'revision'")
                .bind(revision)
                .execute(&mut self.conn)
                .await
                .map_err(|e| backend("saving the revision counter", e))?;
        }
        sqlx::query("COMMIT")
            .execute(&mut self.conn)
            .await
            .map_err(|e| backend("committing", e))?;
        Ok(Applied {
            outcomes,
            events,
            revision,
            seq: chain.seq,
            head: chain.head,
        })
    }

    /// Applies a txn with zero or several ops. The inner `Result` is the txn's own
    /// outcome (on error nothing of it remains); the outer one a database failure.
    async fn apply_multi(
        &mut self,
        txn: &Txn,
        now: i64,
        revision: &mut i64,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Result<Vec<i64>>> {
        if txn.ops.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let sp = |e| backend("managing a savepoint", e);
        sqlx::query("SAVEPOINT txn")
            .execute(&mut self.conn)
            .await
            .map_err(sp)?;
        let mark = events.len();
        let mut revs = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            let r = apply_run(
                &mut self.conn,
                &self.op_sql,
                Kind::of(op),
                &[op],
                now,
                revision,
            )
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("internal: no op outcome".into())));
            match r {
                Ok(rev) => {
                    events.push(op.committed(rev));
                    revs.push(rev);
                }
                Err(e) => {
                    sqlx::query("ROLLBACK TO txn")
                        .execute(&mut self.conn)
                        .await
                        .map_err(sp)?;
                    sqlx::query("RELEASE txn")
                        .execute(&mut self.conn)
                        .await
                        .map_err(sp)?;
                    events.truncate(mark);
                    return Ok(Err(e));
                }
            }
        }
        sqlx::query("RELEASE txn")
            .execute(&mut self.conn)
            .await
            .map_err(sp)?;
        Ok(Ok(revs))
    }

    async fn purge(&mut self, now: i64, events: &mut Vec<WatchEvent>) -> Result<usize> {
        let err = |e| backend("purging expired items", e);
        let rows = sqlx::query(
            "DELETE FROM kv WHERE key IN (SELECT key FROM kv \
             WHERE expires_ns IS NOT NULL AND expires_ns <= ?1 ORDER BY expires_ns LIMIT ?2) \
             RETURNING key",
        )
        .bind(now)
        .bind(crate::PURGE_BATCH as i64)
        .fetch_all(&mut self.conn)
        .await
        .map_err(err)?;
        for row in &rows {
            events.push(WatchEvent::Delete {
                key: row.try_get(0).map_err(err)?,
                revision: 0,
            });
        }
        Ok(rows.len())
    }

    async fn insert_audit(&mut self, rows: &[AuditRow]) -> Result<()> {
        let mut rest = rows;
        while !rest.is_empty() {
            let Some((n, sql)) = self.audit_sql.iter().find(|(n, _)| *n <= rest.len()) else {
                break; // unreachable: the smallest chunk is 1
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

fn drain(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(req) => batch.push(req),
            Err(_) => break,
        }
    }
}
