//! PostgreSQL backend, for several auth servers on one database.
//!
//! Commits go to one writer task per server, which folds the commits waiting for it into
//! one database transaction (group commit, see `writer`). Every such transaction first
//! locks the `revision` row of `meta`: writers from every server queue there, so
//! revisions, change-feed positions and audit seqs are handed out in commit order and the
//! audit chain stays one linear chain whoever writes. Each write also goes into `changes`, the change feed, which a follower
//! task on every server reads (after a `NOTIFY`, after every reconnect, and every second)
//! and turns into watch events. A gap in the feed — rows pruned while this server was
//! away — becomes [`WatchEvent::Reset`], never a silently stale view.
//!
//! Expiry is decided on the database's clock (`now()` for reads, the clock read under the
//! lock for writes and purges), never on a server's: with several servers whose clocks
//! differ, one single-use token is live or expired for all of them at once.

mod feed;
mod ops;
mod write;
mod writer;

use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row as _};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::audit::{ChainCheck, StoredRow, format_time, parse_time};
use crate::sqlite::{backend, prefix_upper_bound};
use crate::store::{AuditQuery, AuditRecord, AuditVerification, Item, Store, Txn, WatchEvent};
use crate::{Result, StoreError};

use feed::Feed;
use writer::{Request, Writer};

/// Schema migrations, embedded at compile time. sqlx takes an advisory lock while it
/// migrates, so servers starting together do not race.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Capacity of the watch broadcast; slower receivers see `Lagged`.
const WATCH_CAPACITY: usize = 16_384;
/// Connections per server: one for the writer, the rest for reads.
const MAX_CONNECTIONS: u32 = 8;
/// Queued commits the writer may hold before `commit()` callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;
/// The live-item condition of reads, on the database's clock (Unix ns).
macro_rules! live_now {
    () => {
        "(expires_ns IS NULL OR expires_ns > (extract(epoch FROM now()) * 1000000000)::BIGINT)"
    };
}
/// How long to wait for a connection (the database down or overloaded) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Audit records loaded per round trip by `audit_verify`.
const VERIFY_BATCH: i64 = 10_000;

/// The PostgreSQL [`Store`]. Many processes may share one database.
pub struct PostgresStore {
    pool: PgPool,
    watch: broadcast::Sender<WatchEvent>,
    requests: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    feed: Arc<Feed>,
    follower: Mutex<Option<JoinHandle<()>>>,
    /// Where the database is, without credentials, for messages.
    target: String,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host[:port]/db?sslmode=…`; the password, if
    /// any, from the URL, `PGPASSWORD` or a passfile), brings the schema up to date and
    /// starts following the change feed.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let target = redacted(url);
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Backend(format!("the PostgreSQL URL {target} is not usable: {e}"))
            })?
            .application_name("sigil-auth")
            // A server that stops mid-transaction (paused VM, partition) would hold the
            // revision lock every server's commits queue on: the database ends such a
            // session, and no statement or lock wait runs unbounded.
            .options([
                ("idle_in_transaction_session_timeout", "10s"),
                ("lock_timeout", "15s"),
                ("statement_timeout", "30s"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| backend(&format!("connecting to {target}"), e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {target}: {e}")))?;
        let (watch, _) = broadcast::channel(WATCH_CAPACITY);
        let head = feed::head(&pool).await?;
        let feed = Arc::new(Feed::new(head));
        let follower = tokio::spawn(feed::follow(pool.clone(), feed.clone(), watch.clone()));
        let (requests, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = tokio::spawn(Writer::new(pool.clone(), feed.clone()).run(rx));
        Ok(PostgresStore {
            pool,
            watch,
            requests,
            writer: Mutex::new(Some(writer)),
            feed,
            follower: Mutex::new(Some(follower)),
            target,
        })
    }

    /// Finishes queued commits, stops following the feed and closes every connection.
    pub async fn close(mut self) {
        // Closing the queue (its only sender) lets the writer finish and stop.
        drop(std::mem::replace(&mut self.requests, mpsc::channel(1).0));
        let writer = self.writer.lock().ok().and_then(|mut t| t.take());
        if let Some(Err(e)) = match writer {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::error!(error = %e, "postgres writer task failed");
        }
        if let Some(task) = self.follower.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
        self.pool.close().await;
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Backend("postgres writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("postgres writer stopped before replying".into()))?
    }

    /// Where the database is (user, host, port, database; never a password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Appends audit records verbatim (seq, time, fields, hashes), for moving a cluster
    /// from another backend: only records that link onto this log's head, in order.
    pub async fn import_audit(&self, records: &[AuditRecord]) -> Result<()> {
        write::import_audit(&self.pool, records).await
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The writer ends by itself once its queue is closed and drained.
        if let Some(task) = self.follower.get_mut().ok().and_then(|t| t.take()) {
            task.abort();
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs. Everything between
/// `://` and the last `@` of the authority is user info, even if the password holds an
/// unencoded `/`, `?` or `@`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".into();
    };
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let after = &rest[at + 1..];
            let (host, tail) = match after.find(['/', '?']) {
                Some(i) => after.split_at(i),
                None => (after, ""),
            };
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            };
            (shown, tail)
        }
        None => match rest.find(['/', '?']) {
            Some(i) => (rest[..i].to_string(), &rest[i..]),
            None => (rest.to_string(), ""),
        },
    };
    // Query parameters may carry `password=`: keep only their names.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    Some((k, v)) => format!("{k}={v}"),
                    None => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Whether `url` carries a password (in the user info or as a `password=` parameter).
pub fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let (in_userinfo, tail) = match rest.rfind('@') {
        Some(at) => (rest[..at].contains(':'), &rest[at + 1..]),
        None => (false, rest),
    };
    let in_query = tail.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|p| {
            p.split_once('=')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case("password"))
        })
    });
    in_userinfo || in_query
}

fn item_from_row(row: &PgRow) -> Result<Item> {
    let key: String = row.try_get(0).map_err(|e| backend("reading kv key", e))?;
    let err = |e: sqlx::Error| backend(&format!("reading {key}"), e);
    let value: Vec<u8> = row.try_get(1).map_err(err)?;
    let revision: i64 = row.try_get(2).map_err(err)?;
    let expires_ns: Option<i64> = row.try_get(3).map_err(err)?;
    Ok(Item {
        expires: feed::expiry(&key, expires_ns)?,
        value,
        revision,
        key,
    })
}

fn record_from_row(row: &PgRow) -> Result<AuditRecord> {
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

fn stored_row(row: &PgRow) -> Result<StoredRow> {
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

impl PostgresStore {
    /// `columns` of at most `limit` live rows under `prefix` after `start_after`,
    /// in key order: a range on the COLLATE "C" primary key, an index range scan.
    async fn page_rows(
        &self,
        columns: &'static str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<PgRow>> {
        let upper = prefix_upper_bound(prefix);
        let sql = format!(
            "SELECT {columns} FROM kv WHERE key >= $1 AND key > $2 AND {} {} ORDER BY key LIMIT $3",
            live_now!(),
            if upper.is_some() { "AND key < $4" } else { "" }
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(prefix)
            .bind(start_after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if let Some(upper) = upper {
            q = q.bind(upper);
        }
        q.fetch_all(&self.pool)
            .await
            .map_err(|e| backend(&format!("listing {prefix}*"), e))
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<Item>> {
        let row = sqlx::query(concat!(
            "SELECT key, value, revision, expires_ns FROM kv WHERE key = $1 AND ",
            live_now!()
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| backend(&format!("reading {key}"), e))?;
        row.as_ref().map(item_from_row).transpose()
    }

    async fn list_page(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<Item>> {
        self.page_rows(
            "key, value, revision, expires_ns",
            prefix,
            start_after,
            limit,
        )
        .await?
        .iter()
        .map(item_from_row)
        .filter(|i| i.as_ref().map_or(true, |i| i.key.starts_with(prefix)))
        .collect()
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
            "SELECT COUNT(*) FROM kv WHERE key >= $1 AND {} {}",
            live_now!(),
            if upper.is_some() { "AND key < $2" } else { "" }
        );
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql)).bind(prefix);
        if let Some(upper) = upper {
            q = q.bind(upper);
        }
        let n: i64 = q
            .fetch_one(&self.pool)
            .await
            .map_err(|e| backend(&format!("counting {prefix}*"), e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn count_expiring_before(
        &self,
        prefix: &str,
        before: time::OffsetDateTime,
    ) -> Result<u64> {
        let upper = prefix_upper_bound(prefix);
        let sql = format!(
            "SELECT COUNT(*) FROM kv WHERE key >= $1 AND {} AND expires_ns < $2 {}",
            live_now!(),
            if upper.is_some() { "AND key < $3" } else { "" }
        );
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(prefix)
            .bind(crate::sqlite::to_ns(before));
        if let Some(upper) = upper {
            q = q.bind(upper);
        }
        let n: i64 = q
            .fetch_one(&self.pool)
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
        crate::metrics::commit_observed("postgres", started, &r);
        r
    }

    async fn audit_query(&self, q: AuditQuery) -> Result<Vec<AuditRecord>> {
        // Only constant fragments are concatenated; every value is bound, and only the
        // parameters the statement names (PostgreSQL refuses extra ones).
        let mut sql = String::from(
            "SELECT seq, time, type, fields, prev_hash, hash FROM audit WHERE seq > $1",
        );
        let mut n = 1;
        if q.since.is_some() {
            n += 1;
            sql.push_str(&format!(" AND time >= ${n}"));
        }
        if q.event_type.is_some() {
            n += 1;
            sql.push_str(&format!(" AND type = ${n}"));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
        let limit = q
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(q.after_seq.unwrap_or(0));
        if let Some(since) = q.since {
            query = query.bind(format_time(since));
        }
        if let Some(t) = q.event_type {
            query = query.bind(t);
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| backend("querying the audit log", e))?;
        rows.iter().map(record_from_row).collect()
    }

    async fn audit_verify(&self) -> Result<AuditVerification> {
        let mut chain = ChainCheck::new();
        loop {
            let rows = sqlx::query(
                "SELECT seq, time, type, fields, prev_hash, hash FROM audit \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(chain.last_seq())
            .bind(VERIFY_BATCH)
            .fetch_all(&self.pool)
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
        write::audit_head(&self.pool).await
    }

    fn watch(&self) -> broadcast::Receiver<WatchEvent> {
        self.watch.subscribe()
    }

    async fn purge_expired(&self) -> Result<usize> {
        let purged = self.send(|reply| Request::Purge { reply }).await?;
        write::prune(&self.pool).await?;
        Ok(purged)
    }

    fn health(&self) -> std::result::Result<(), String> {
        self.feed.health()
    }

    fn feed_lag(&self) -> Option<Duration> {
        Some(self.feed.since_last_read())
    }
}

#[cfg(test)]
mod tests {
    use super::{has_password, redacted};

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("postgres://sigil:s3cret@db:5432/sigil?sslmode=verify-full"),
            "postgres://sigil:***@db:5432/sigil?sslmode=verify-full"
        );
        assert_eq!(
            redacted("postgres://sigil@db/sigil?password=s3cret&sslmode=require"),
            "postgres://sigil@db/sigil?password=***&sslmode=require"
        );
        assert_eq!(redacted("postgres://db/x"), "postgres://db/x");
        assert_eq!(redacted("no scheme"), "<unparsable URL>");
        assert!(!redacted("postgres://u:p%40ss@h/d").contains("p%40ss"));
        // Unencoded `/`, `?` and `@` in a password are still the password.
        for url in [
            "postgres://u:pa/ss@h/d",
            "postgres://u:pa?ss@h/d",
            "postgres://u:p@ss@h/d",
        ] {
            let shown = redacted(url);
            assert_eq!(shown, "postgres://u:***@h/d", "{url}");
            assert!(has_password(url), "{url}");
        }
    }

    #[test]
    fn password_detection() {
        assert!(has_password("postgres://u:p@h/d"));
        assert!(has_password(
            "postgresql://u@h/d?sslmode=require&Password=x"
        ));
        assert!(!has_password("postgres://u@h/d?sslmode=verify-full"));
        assert!(!has_password("postgres://h:5432/d"));
    }
}
