//! The writer: one task per server that drains queued commits into one PostgreSQL
//! transaction (group commit).
//!
//! Per batch, on the writer's own connection:
//! 1. `BEGIN`, the `meta.revision` row lock, then the audit head and the database's clock,
//!    in one round trip (three statements of one simple query; each later statement
//!    reads after the lock is held, so it sees whatever the previous holder — any
//!    server — committed). The lock is what serialises writers of every server.
//! 2. The txns' ops in arrival order: runs of single-op txns of one kind on distinct keys
//!    as one statement each (see `ops`); a txn with several ops inside a `SAVEPOINT`, so a
//!    failing later op is undone (`ROLLBACK TO SAVEPOINT`). A failing op
//!    (`AlreadyExists`/`NotFound`/`Conflict`) fails only its own txn, and only the ops
//!    that apply are numbered, so revisions and feed rows stay contiguous.
//! 3. One statement: the audit events of the txns that succeeded, chained in order onto
//!    the head; the revision counter; `NOTIFY` (sent at commit, only if it commits).
//! 4. `COMMIT`.
//!
//! Four round trips per batch under the lock (three when the batch is one run, as
//! renewals make: step 3 rides in the run's statement), against ≈ 9 per commit before. Then the
//! feed follower is poked (watch events come from the feed, in revision order, for this
//! server's writes and every other server's alike) and every caller gets its reply.
//!
//! A database error anywhere (or a batch outliving [`BATCH_TIMEOUT`]) fails every txn of
//! the batch; its connection is dropped (the server rolls the transaction back when the
//! session ends) and the next batch starts on a fresh one, reading the counters anew
//! under the lock as every batch does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Postgres, Row as _};
use tokio::sync::{mpsc, oneshot};

use super::feed::Feed;
use super::ops::{Kind, apply_run, purge};
use super::write::CHANNEL;
use crate::audit::{canonical_fields, format_time, hash_parts};
use crate::sqlite::backend;
use crate::store::{Op, Txn};
use crate::{GENESIS_HASH, Result, StoreError};

/// Most txns folded into one database transaction.
const MAX_BATCH: usize = 512;
/// Most multi-op txns (savepoints) in one batch: past 64 subtransactions PostgreSQL's
/// per-backend cache overflows and every other session's snapshots get slower.
const MAX_SAVEPOINTS: usize = 32;
/// Times the writer lets callers that were just answered queue their next txn before it
/// starts a smaller batch.
const GATHER_YIELDS: usize = 4;
/// A batch still running after this is abandoned and its connection dropped: a session
/// stuck on a dead network must not stall every commit of this server. The database
/// bounds each statement and lock wait on its side too (`statement_timeout`).
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// `BEGIN`, the lock, then the audit head and the database's clock (Unix ns), read after
/// the lock is held. Expiry is decided on the database's clock, so servers whose clocks
/// differ still agree on which items are live.
const BEGIN_LOCK_HEAD: &str = "BEGIN; \
     SELECT value FROM meta WHERE name = 'revision' FOR UPDATE; \
     SELECT h.seq, h.hash, (extract(epoch FROM clock_timestamp()) * 1000000000)::BIGINT \
     FROM (VALUES (1)) AS one LEFT JOIN LATERAL \
     (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) AS h ON true";

/// The batch's audit rows, the new revision counter and its notification.
const FINISH: &str = "WITH a AS (INSERT INTO audit (seq, time, type, fields, prev_hash, hash) \
     SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
     $6::TEXT[])), \
     m AS (UPDATE meta SET value = $7 WHERE name = 'revision' AND value <> $7 RETURNING value) \
     SELECT pg_notify($8, value::TEXT) FROM m";

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

impl Request {
    fn is_multi(&self) -> bool {
        matches!(self, Request::Commit { txn, .. } if txn.ops.len() > 1)
    }

    fn fail(self, err: StoreError) {
        match self {
            Request::Commit { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::Purge { reply } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// What a request gets once the batch has committed.
enum Outcome {
    Commit(Result<Vec<i64>>),
    Purge(usize),
}

/// Audit rows as column arrays, chained onto the head read under the lock.
#[derive(Clone)]
pub(super) struct Chain {
    seq: i64,
    head: String,
    pub(super) seqs: Vec<i64>,
    pub(super) times: Vec<String>,
    pub(super) types: Vec<String>,
    pub(super) fields: Vec<String>,
    pub(super) prev: Vec<String>,
    pub(super) hashes: Vec<String>,
}

impl Chain {
    fn new(seq: i64, head: String) -> Chain {
        Chain {
            seq,
            head,
            seqs: Vec::new(),
            times: Vec::new(),
            types: Vec::new(),
            fields: Vec::new(),
            prev: Vec::new(),
            hashes: Vec::new(),
        }
    }

    fn append(&mut self, txn: &Txn) {
        for ev in &txn.audit {
            self.seq += 1;
            let time = format_time(ev.time);
            let fields = canonical_fields(&ev.fields);
            let hash = hash_parts(&self.head, self.seq, &time, &ev.event_type, &fields);
            self.prev
                .push(std::mem::replace(&mut self.head, hash.clone()));
            self.seqs.push(self.seq);
            self.times.push(time);
            self.types.push(ev.event_type.clone());
            self.fields.push(fields);
            self.hashes.push(hash);
        }
    }
}

/// Why a batch failed, and whether its `COMMIT` may have gone through anyway.
struct Failed {
    err: StoreError,
    at_commit: bool,
}

impl From<StoreError> for Failed {
    fn from(err: StoreError) -> Failed {
        Failed {
            err,
            at_commit: false,
        }
    }
}

pub(super) struct Writer {
    pool: PgPool,
    feed: Arc<Feed>,
    conn: Option<PoolConnection<Postgres>>,
}

impl Writer {
    pub(super) fn new(pool: PgPool, feed: Arc<Feed>) -> Writer {
        Writer {
            pool,
            feed,
            conn: None,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut last_size = 0;
        while let Some(first) = rx.recv().await {
            let mut savepoints = usize::from(first.is_multi());
            batch.push(first);
            drain(&mut rx, &mut batch, &mut savepoints);
            // Callers answered by the last batch are usually about to send again; give
            // them a moment so they share the next transaction.
            for _ in 0..GATHER_YIELDS {
                if batch.len() >= last_size || batch.len() >= MAX_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
                drain(&mut rx, &mut batch, &mut savepoints);
            }
            last_size = batch.len();
            self.process(&mut batch).await;
        }
    }

    async fn process(&mut self, batch: &mut Vec<Request>) {
        let result = match tokio::time::timeout(BATCH_TIMEOUT, self.apply_batch(batch)).await {
            Ok(r) => r,
            Err(_) => Err(Failed {
                err: StoreError::Backend(format!(
                    "the write transaction did not finish within {} s",
                    BATCH_TIMEOUT.as_secs()
                )),
                at_commit: true,
            }),
        };
        match result {
            Ok((outcomes, advanced)) => {
                if advanced {
                    // Deliver this batch's writes without waiting for the NOTIFY.
                    self.feed.poke();
                }
                for (req, outcome) in batch.drain(..).zip(outcomes) {
                    match (req, outcome) {
                        (Request::Commit { reply, .. }, Outcome::Commit(r)) => {
                            let _ = reply.send(r);
                        }
                        (Request::Purge { reply }, Outcome::Purge(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        (req, _) => {
                            req.fail(StoreError::Backend("internal: reply mismatch".into()))
                        }
                    }
                }
            }
            Err(Failed { err, at_commit }) => {
                tracing::error!(error = %err, txns = batch.len(), "postgres write batch failed");
                // A session in an unknown state is never reused: closing it rolls back
                // whatever it had not committed.
                if let Some(conn) = self.conn.take() {
                    drop(conn.detach());
                }
                let what = if at_commit {
                    "whether it committed is unknown"
                } else {
                    "nothing was committed"
                };
                for req in batch.drain(..) {
                    req.fail(StoreError::Backend(format!("{err}; {what}")));
                }
            }
        }
    }

    async fn connection(&mut self) -> Result<&mut PgConnection> {
        if self.conn.is_none() {
            let conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| backend("connecting for a write", e))?;
            self.conn = Some(conn);
        }
        match self.conn.as_mut() {
            Some(c) => Ok(&mut **c),
            None => Err(StoreError::Backend("internal: no write connection".into())),
        }
    }

    /// Runs one database transaction for `batch`; returns every request's outcome and
    /// whether the revision advanced.
    async fn apply_batch(
        &mut self,
        batch: &[Request],
    ) -> std::result::Result<(Vec<Outcome>, bool), Failed> {
        let err = |e| backend("locking the revision counter", e);
        let reused = self.conn.is_some();
        let rows = match sqlx::raw_sql(BEGIN_LOCK_HEAD)
            .fetch_all(self.connection().await?)
            .await
        {
            Ok(rows) => rows,
            // A connection kept since the last batch may have been closed by the server
            // meanwhile (restart, failover): nothing was written, so try once more on a
            // fresh one, as the pool's check before handing out a connection would.
            Err(e) if reused => {
                tracing::debug!(error = %e, "postgres writer: reconnecting");
                if let Some(conn) = self.conn.take() {
                    drop(conn.detach());
                }
                sqlx::raw_sql(BEGIN_LOCK_HEAD)
                    .fetch_all(self.connection().await?)
                    .await
                    .map_err(err)?
            }
            Err(e) => return Err(err(e).into()),
        };
        let conn = self.connection().await?;
        let [lock, head] = rows.as_slice() else {
            return Err(StoreError::Backend(format!(
                "locking the revision counter: {} rows where 2 were due",
                rows.len()
            ))
            .into());
        };
        let base: i64 = lock.try_get(0).map_err(err)?;
        let seq: Option<i64> = head.try_get(0).map_err(err)?;
        let hash: Option<String> = head.try_get(1).map_err(err)?;
        let now: i64 = head.try_get(2).map_err(err)?;
        let mut chain = Chain::new(
            seq.unwrap_or(0),
            hash.unwrap_or_else(|| GENESIS_HASH.to_string()),
        );
        let mut revision = base;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut finished = false;

        let mut i = 0;
        while i < batch.len() {
            let txn = match &batch[i] {
                Request::Purge { .. } => {
                    outcomes.push(Outcome::Purge(purge(conn, now, &mut revision).await?));
                    i += 1;
                    continue;
                }
                Request::Commit { txn, .. } => txn,
            };
            if txn.ops.len() != 1 {
                let r = apply_multi(conn, txn, now, &mut revision).await?;
                if r.is_ok() {
                    chain.append(txn);
                }
                outcomes.push(Outcome::Commit(r));
                i += 1;
                continue;
            }
            // A run of single-op txns of one kind on distinct keys, in one statement.
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
            // A batch that is one run (many renewals, say) finishes in the run's own
            // statement, with the chain as it is if every op applies.
            let whole = (i == 0 && run.len() == batch.len()).then(|| {
                let mut all = chain.clone();
                run.iter().for_each(|txn| all.append(txn));
                all
            });
            let results = apply_run(conn, kind, &ops, now, &mut revision, whole.as_ref()).await?;
            if let Some(all) = whole
                && results.iter().all(|r| r.is_ok())
            {
                chain = all;
                finished = true;
            } else {
                for (txn, r) in run.iter().zip(&results) {
                    if r.is_ok() {
                        chain.append(txn);
                    }
                }
            }
            for r in results {
                outcomes.push(Outcome::Commit(r.map(|rev| vec![rev])));
            }
            i += run.len();
        }

        // After a finishing run whose ops did not all apply, this adds the audit rows of
        // those that did; the counter is already saved and notified then.
        if !finished && (revision != base || !chain.seqs.is_empty()) {
            sqlx::query(FINISH)
                .bind(chain.seqs)
                .bind(chain.times)
                .bind(chain.types)
                .bind(chain.fields)
                .bind(chain.prev)
                .bind(chain.hashes)
                .bind(revision)
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await
                .map_err(|e| backend("appending to the audit log and advancing the revision", e))?;
        }
        sqlx::raw_sql("COMMIT")
            .execute(&mut *conn)
            .await
            .map_err(|e| Failed {
                err: backend("committing", e),
                at_commit: true,
            })?;
        Ok((outcomes, revision != base))
    }
}

/// Applies a txn with zero or several ops. The inner `Result` is the txn's own outcome
/// (on error nothing of it remains and `*revision` is back where it was); the outer one a
/// database failure.
async fn apply_multi(
    conn: &mut PgConnection,
    txn: &Txn,
    now: i64,
    revision: &mut i64,
) -> Result<Result<Vec<i64>>> {
    if txn.ops.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let sp = |e| backend("managing a savepoint", e);
    // Not released on success: the savepoints of a batch nest harmlessly until COMMIT,
    // and each `ROLLBACK TO` finds the newest one, which is this txn's. One round trip
    // saved per txn.
    sqlx::raw_sql("SAVEPOINT txn")
        .execute(&mut *conn)
        .await
        .map_err(sp)?;
    let mark = *revision;
    let mut revs = Vec::with_capacity(txn.ops.len());
    for (n, op) in txn.ops.iter().enumerate() {
        let r = apply_run(conn, Kind::of(op), &[op], now, revision, None)
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("internal: no op outcome".into())));
        match r {
            Ok(rev) => revs.push(rev),
            Err(e) => {
                // A failed op wrote nothing; only earlier ops of the txn need undoing.
                if n > 0 {
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT txn")
                        .execute(&mut *conn)
                        .await
                        .map_err(sp)?;
                }
                *revision = mark;
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(revs))
}

fn drain(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>, savepoints: &mut usize) {
    while batch.len() < MAX_BATCH && *savepoints < MAX_SAVEPOINTS {
        match rx.try_recv() {
            Ok(req) => {
                *savepoints += usize::from(req.is_multi());
                batch.push(req);
            }
            Err(_) => break,
        }
    }
}
