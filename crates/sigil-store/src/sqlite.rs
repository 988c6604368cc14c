//! SQLite backend: one writer task doing group commit over one connection, plus a pool
//! of read connections (WAL lets readers run alongside the writer).

mod ops;
mod write_health;
mod writer;

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection as _, Row as _, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::audit::{ChainCheck, StoredRow, format_time, parse_time};
use crate::store::{AuditQuery, AuditRecord, AuditVerification, Item, Store, Txn, WatchEvent};
use crate::{GENESIS_HASH, Result, StoreError};

use write_health::WriteHealth;
use writer::{Request, Writer};

/// Schema migrations, embedded at compile time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Queued commits the writer may hold before `commit()` callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;
/// Capacity of the watch broadcast; slower receivers see `Lagged`.
const WATCH_CAPACITY: usize = 16_384;
/// Read connections (readers never block the writer in WAL mode).
const READ_CONNECTIONS: u32 = 4;
/// Audit records loaded per round trip by `audit_verify`.
const VERIFY_BATCH: i64 = 10_000;
/// How long a connection waits on a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded SQLite [`Store`] (WAL, `synchronous=FULL`, group commit).
///
/// One process should own a database file: the writer keeps the revision counter and the
/// audit chain head in memory, and watch events only reach this process's receivers.
pub struct SqliteStore {
    requests: mpsc::Sender<Request>,
    read: SqlitePool,
    watch: broadcast::Sender<WatchEvent>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    writes: std::sync::Arc<WriteHealth>,
}

impl SqliteStore {
    /// Opens (creating if needed, with mode 0600 and its parent directory with 0700) the
    /// database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        prepare_file(path)?;
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| backend("building connection options", e))?
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        // The writer's bulk statements return a row per changed key: let them stream
        // without stalling sqlx's connection thread.
        let writer_opts = opts.clone().row_buffer_size(1024);
        let mut conn = SqliteConnection::connect_with(&writer_opts)
            .await
            .map_err(|e| backend(&format!("opening {}", path.display()), e))?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(opts.pragma("query_only", "ON"))
            .await
            .map_err(|e| backend(&format!("opening readers for {}", path.display()), e))?;

        let (watch, _) = broadcast::channel(WATCH_CAPACITY);
        let writes = std::sync::Arc::new(WriteHealth::default());
        let writer = Writer::load(conn, watch.clone(), writes.clone()).await?;
        let (requests, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(writer.run(rx));
        Ok(SqliteStore {
            requests,
            read,
            watch,
            writer_task: Mutex::new(Some(task)),
            writes,
        })
    }

    /// Finishes queued commits, then closes every connection (checkpointing the WAL).
    pub async fn close(self) {
        let SqliteStore {
            requests,
            read,
            writer_task,
            ..
        } = self;
        drop(requests);
        let task = writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(Err(e)) = match task {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::error!(error = %e, "sqlite writer task failed");
        }
        read.close().await;
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Backend("sqlite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("sqlite writer stopped before replying".into()))?
    }
}

/// Creates the parent directory (0700) and the database file (0600) if missing.
fn prepare_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError::Backend(format!("creating directory {}: {e}", dir.display()))
            })?;
    }
    // SQLite gives the -wal and -shm files the main file's mode, so 0600 covers them too.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Backend(format!(
            "creating {}: {e}",
            path.display()
        ))),
    }
}

/// Wraps a database error with what we were doing. sqlx/SQLite messages carry no values.
pub(crate) fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

/// Unix nanoseconds, clamped to i64 (years 1677..2262; beyond that means "never").
pub(crate) fn to_ns(t: OffsetDateTime) -> i64 {
    let ns = t.unix_timestamp_nanos();
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn now_ns() -> i64 {
    to_ns(OffsetDateTime::now_utc())
}

fn item_from_row(row: &SqliteRow) -> Result<Item> {
    let key: String = row.try_get(0).map_err(|e| backend("reading kv key", e))?;
    let expires_ns: Option<i64> = row
        .try_get(3)
        .map_err(|e| backend(&format!("reading {key}"), e))?;
    let expires = expires_ns
        .map(|ns| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)))
        .transpose()
        .map_err(|e| backend(&format!("reading expiry of {key}"), e))?;
    Ok(Item {
        value: row
            .try_get(1)
            .map_err(|e| backend(&format!("reading {key}"), e))?,
        revision: row
            .try_get(2)
            .map_err(|e| backend(&format!("reading {key}"), e))?,
        expires,
        key,
    })
}

/// The smallest string greater than every string starting with `prefix`, if any.
/// UTF-8 byte order equals code point order, so incrementing the last incrementable char
/// gives an exclusive upper bound for an index range scan.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'), // skip the surrogate gap
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn record_from_row(row: &SqliteRow) -> Result<AuditRecord> {
    let seq: i64 = row
        .try_get(0)
        .map_err(|e| backend("reading audit seq", e))?;
    let err = |e: sqlx::Error| backend(&format!("reading audit record {seq}"), e);
    let time_text: String = row.try_get(1).map_err(err)?;
    let fields_text: String = row.try_get(3).map_err(err)?;
    Ok(AuditRecord {
        seq,
        time: parse_time(&time_text).ok_or_else(|| {
            StoreError::Backend(format!("audit record {seq} has an unreadable time"))
        })?,
        event_type: row.try_get(2).map_err(err)?,
        fields: serde_json::from_str(&fields_text).map_err(|e| {
            StoreError::Backend(format!("audit record {seq} has unreadable fields: {e}"))
        })?,
        prev_hash: row.try_get(4).map_err(err)?,
        hash: row.try_get(5).map_err(err)?,
    })
}

fn stored_row(row: &SqliteRow) -> Result<StoredRow> {
    let seq: i64 = row
        .try_get(0)
        .map_err(|e| backend("reading audit seq", e))?;
    let err = |e: sqlx::Error| backend(&format!("reading audit record {seq}"), e);
    Ok(StoredRow {
        seq,
        time: row.try_get(1).map_err(err)?,
        event_type: row.try_get(2).map_err(err)?,
        fields: row.try_get(3).map_err(err)?,
        prev_hash: row.try_get(4).map_err(err)?,
        hash: row.try_get(5).map_err(err)?,
    })
}

impl SqliteStore {
    /// `columns` of at most `limit` live rows under `prefix` after `start_after`,
    /// in key order: one range scan of the key index.
    async fn page_rows(
        &self,
        columns: &'static str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>> {
        let upper = prefix_upper_bound(prefix);
        // Only constant fragments are concatenated; every value is bound.
        let sql = format!(
            "SELECT {columns} FROM kv \
             WHERE key >= ?1 AND key > ?2 {} AND (expires_ns IS NULL OR expires_ns > ?3) \
             ORDER BY key LIMIT ?4",
            if upper.is_some() { "AND key < ?5" } else { "" }
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(prefix)
            .bind(start_after)
            .bind(now_ns())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if let Some(upper) = upper {
            // An upper bound keeps the scan inside the prefix's index range.
            q = q.bind(upper);
        }
        q.fetch_all(&self.read)
            .await
            .map_err(|e| backend(&format!("listing {prefix}*"), e))
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Item>> {
        let row = sqlx::query(
            "SELECT key, value, revision, expires_ns FROM kv \
             WHERE key = ?1 AND (expires_ns IS NULL OR expires_ns > ?2)",
        )
        .bind(key)
        .bind(now_ns())
        .fetch_optional(&self.read)
        .await
        .map_err(|e| backend(&format!("reading {key}"), e))?;
        row.as_ref().map(item_from_row).transpose()
    }

    async fn list_page(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<Item>> {
        let rows = self
            .page_rows(
                "key, value, revision, expires_ns",
                prefix,
                start_after,
                limit,
            )
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let item = item_from_row(row)?;
            if item.key.starts_with(prefix) {
                items.push(item);
            }
        }
        Ok(items)
    }

    async fn list_keys(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let rows = self.page_rows("key", prefix, start_after, limit).await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: String = row
                .try_get(0)
                .map_err(|e| backend(&format!("listing keys {prefix}*"), e))?;
            if key.starts_with(prefix) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn count(&self, prefix: &str) -> Result<u64> {
        let upper = prefix_upper_bound(prefix);
        let sql = format!(
            "SELECT COUNT(*) FROM kv WHERE key >= ?1 {} \
             AND (expires_ns IS NULL OR expires_ns > ?2)",
            if upper.is_some() { "AND key < ?3" } else { "" }
        );
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(prefix)
            .bind(now_ns());
        if let Some(upper) = upper {
            q = q.bind(upper);
        }
        let n: i64 = q
            .fetch_one(&self.read)
            .await
            .map_err(|e| backend(&format!("counting {prefix}*"), e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn count_expiring_before(&self, prefix: &str, before: OffsetDateTime) -> Result<u64> {
        let upper = prefix_upper_bound(prefix);
        let sql = format!(
            "SELECT COUNT(*) FROM kv WHERE key >= ?1 {} \
             AND expires_ns > ?2 AND expires_ns < ?4",
            if upper.is_some() { "AND key < ?3" } else { "" }
        );
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(prefix)
            .bind(now_ns());
        // ?3 is bound even when the statement does not name it, so ?4 keeps its place.
        q = q.bind(upper.unwrap_or_default()).bind(to_ns(before));
        let n: i64 = q
            .fetch_one(&self.read)
            .await
            .map_err(|e| backend(&format!("counting {prefix}* by expiry"), e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn commit(&self, txn: Txn) -> Result<Vec<i64>> {
        if txn.ops.is_empty() && txn.audit.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let r = self.send(|reply| Request::Commit { txn, reply }).await;
        crate::metrics::commit_observed("sqlite", started, &r);
        r
    }

    async fn audit_query(&self, q: AuditQuery) -> Result<Vec<AuditRecord>> {
        // Only constant fragments are concatenated; every value is bound.
        let mut sql = String::from(
            "SELECT seq, time, type, fields, prev_hash, hash FROM audit WHERE seq > ?1",
        );
        if q.since.is_some() {
            sql.push_str(" AND time >= ?2");
        }
        if q.event_type.is_some() {
            sql.push_str(" AND type = ?3");
        }
        sql.push_str(" ORDER BY seq LIMIT ?4");
        let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(q.after_seq.unwrap_or(0))
            .bind(q.since.map(format_time))
            .bind(q.event_type)
            .bind(limit)
            .fetch_all(&self.read)
            .await
            .map_err(|e| backend("querying the audit log", e))?;
        rows.iter().map(record_from_row).collect()
    }

    async fn audit_verify(&self) -> Result<AuditVerification> {
        let mut chain = ChainCheck::new();
        loop {
            let rows = sqlx::query(
                "SELECT seq, time, type, fields, prev_hash, hash FROM audit \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(chain.last_seq())
            .bind(VERIFY_BATCH)
            .fetch_all(&self.read)
            .await
            .map_err(|e| backend("reading the audit log", e))?;
            if rows.is_empty() {
                return Ok(chain.intact());
            }
            for row in &rows {
                if let Some(broken) = chain.check(stored_row(row)?) {
                    return Ok(broken);
                }
            }
        }
    }

    async fn audit_head(&self) -> Result<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.read)
            .await
            .map_err(|e| backend("reading the audit head", e))?;
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

    fn watch(&self) -> broadcast::Receiver<WatchEvent> {
        self.watch.subscribe()
    }

    async fn purge_expired(&self) -> Result<usize> {
        self.send(|reply| Request::Purge { reply }).await
    }

    fn writable(&self) -> std::result::Result<(), String> {
        self.writes.check()
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab"), Some("ac".into()));
        assert_eq!(prefix_upper_bound("a/"), Some("a0".into()));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound("a\u{D7FF}"), Some("a\u{E000}".into()));
    }
}
