//! The change-feed follower: turns rows of `changes` into watch events, in revision order.
//!
//! `NOTIFY` is lossy: a notification sent while this server's listening connection was
//! down is gone. So the follower never trusts notifications for content, only as a hint
//! to read: it reads every row after the last revision it delivered after each
//! notification, after each (re)connect of its listener, after each local commit, and
//! every [`POLL_EVERY`] regardless. Revisions in the feed are contiguous (a transaction
//! that rolls back also rolls back its revisions), so a missing revision means rows were
//! pruned while we were away: receivers get [`WatchEvent::Reset`] and re-read.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Row as _;
use sqlx::postgres::{PgListener, PgPool};
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast};

use super::write::CHANNEL;
use crate::sqlite::backend;
use crate::store::{Item, WatchEvent};
use crate::{Result, StoreError};

/// Read the feed at least this often, notification or not.
pub(super) const POLL_EVERY: Duration = Duration::from_secs(1);
/// Unhealthy when the feed has not been read successfully for this long.
const STALE_AFTER: Duration = Duration::from_secs(5);
/// Rows per read.
const BATCH: i64 = 2000;
/// Waits between listener reconnect attempts (doubling up to the last).
const RECONNECT: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// The follower's state, shared with the store for health and pokes.
pub(super) struct Feed {
    state: Mutex<State>,
    wake: Notify,
}

struct State {
    /// Last revision delivered to watchers.
    delivered: i64,
    /// The key and time of the change row at `delivered`, to notice a database that
    /// came back with another history (a failover to a replica that had not received
    /// our last changes, then new writes at the same revisions).
    fingerprint: Option<(String, String)>,
    listening: bool,
    last_read: Option<Instant>,
    started: Instant,
    problem: Option<String>,
}

impl Feed {
    pub(super) fn new(head: i64) -> Feed {
        Feed {
            state: Mutex::new(State {
                delivered: head,
                fingerprint: None,
                listening: false,
                last_read: None,
                started: Instant::now(),
                problem: None,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the feed now (after a local commit).
    pub(super) fn poke(&self) {
        self.wake.notify_one();
    }

    /// `Ok` while the feed was read successfully within the last few seconds. Without
    /// its listener the feed is still polled every second, so only a failing read makes
    /// this server's view stale.
    /// Time since the feed was last read (since start if never).
    pub(super) fn since_last_read(&self) -> Duration {
        let s = self.lock();
        s.last_read.unwrap_or(s.started).elapsed()
    }

    pub(super) fn health(&self) -> std::result::Result<(), String> {
        let s = self.lock();
        if let Some(p) = &s.problem
            && s.last_read.is_none_or(|t| t.elapsed() > STALE_AFTER)
        {
            return Err(format!("change feed: {p}"));
        }
        match s.last_read {
            Some(t) if t.elapsed() <= STALE_AFTER => Ok(()),
            Some(t) => Err(format!(
                "change feed: last read {} s ago",
                t.elapsed().as_secs()
            )),
            None => Err("change feed: not read yet".into()),
        }
    }
}

/// The feed's current head: the newest committed revision.
pub(super) async fn head(pool: &PgPool) -> Result<i64> {
    sqlx::query_scalar("SELECT value FROM meta WHERE name = 'revision'")
        .fetch_one(pool)
        .await
        .map_err(|e| backend("reading the revision counter", e))
}

/// Unix nanoseconds from the database into an expiry.
pub(super) fn expiry(key: &str, ns: Option<i64>) -> Result<Option<OffsetDateTime>> {
    ns.map(|ns| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)))
        .transpose()
        .map_err(|e| backend(&format!("reading expiry of {key}"), e))
}

/// Runs for the store's lifetime.
pub(super) async fn follow(
    pool: PgPool,
    feed: std::sync::Arc<Feed>,
    tx: broadcast::Sender<WatchEvent>,
) {
    let mut attempt = 0usize;
    loop {
        let mut listener = match listen(&pool).await {
            Ok(l) => {
                attempt = 0;
                l
            }
            Err(e) => {
                {
                    let mut s = feed.lock();
                    s.listening = false;
                    s.problem = Some(e.to_string());
                }
                tracing::warn!(error = %e, "change feed: cannot listen; polling meanwhile");
                // Keep the view current by polling until the listener is back.
                read(&pool, &feed, &tx).await;
                tokio::time::sleep(RECONNECT[attempt.min(RECONNECT.len() - 1)]).await;
                attempt += 1;
                continue;
            }
        };
        feed.lock().listening = true;
        // The database may have failed over to a replica with another history.
        check_history(&pool, &feed, &tx).await;
        // Anything committed while we were not listening is read now.
        read(&pool, &feed, &tx).await;
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(note)) => {
                        // Only a hint to read: one for a revision already delivered
                        // (this server's own write, read after its poke) needs none.
                        let delivered = feed.lock().delivered;
                        if note.payload().parse::<i64>().is_ok_and(|rev| rev <= delivered) {
                            continue;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let mut s = feed.lock();
                        s.listening = false;
                        s.problem = Some("the listening connection was lost".into());
                        drop(s);
                        tracing::warn!("change feed: listening connection lost; reconnecting");
                        break;
                    }
                },
                _ = feed.wake.notified() => {}
                _ = poll.tick() => {}
            }
            read(&pool, &feed, &tx).await;
        }
    }
}

/// After a reconnect: if the head went below what we delivered, or the row we last
/// delivered is not the one we saw, the database has another history than the one our
/// watchers followed: they re-read everything.
async fn check_history(pool: &PgPool, feed: &Feed, tx: &broadcast::Sender<WatchEvent>) {
    let (delivered, fingerprint) = {
        let s = feed.lock();
        (s.delivered, s.fingerprint.clone())
    };
    let Ok(head) = head(pool).await else { return };
    let same = match &fingerprint {
        _ if head < delivered => false,
        None => true,
        Some(fp) => match row_fingerprint(pool, delivered).await {
            Ok(Some(now)) => &now == fp,
            // Pruned: nothing to compare; the gap check in `read_all` still applies.
            Ok(None) => true,
            Err(_) => return,
        },
    };
    if !same {
        tracing::warn!(
            delivered,
            head,
            "change feed: the database's history differs from what this server followed (a failover?); receivers re-read"
        );
        let _ = tx.send(WatchEvent::Reset);
        let mut s = feed.lock();
        s.delivered = head;
        s.fingerprint = None;
    }
}

async fn row_fingerprint(pool: &PgPool, revision: i64) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT key, at::TEXT FROM changes WHERE revision = $1")
        .bind(revision)
        .fetch_optional(pool)
        .await
        .map_err(|e| backend("reading the change feed", e))?;
    row.map(|r| {
        Ok((
            r.try_get(0)
                .map_err(|e| backend("reading the change feed", e))?,
            r.try_get(1)
                .map_err(|e| backend("reading the change feed", e))?,
        ))
    })
    .transpose()
}

async fn listen(pool: &PgPool) -> Result<PgListener> {
    let mut l = PgListener::connect_with(pool)
        .await
        .map_err(|e| backend("connecting the change feed listener", e))?;
    // Reconnects are ours to do (so that each one is followed by a read).
    l.ignore_pool_close_event(true);
    l.listen(CHANNEL)
        .await
        .map_err(|e| backend("listening on the change feed", e))?;
    Ok(l)
}

/// Delivers every committed change after the last delivered one; records the outcome.
async fn read(pool: &PgPool, feed: &Feed, tx: &broadcast::Sender<WatchEvent>) {
    match read_all(pool, feed, tx).await {
        Ok(()) => {
            let mut s = feed.lock();
            s.last_read = Some(Instant::now());
            if s.listening {
                s.problem = None;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "change feed: read failed");
            feed.lock().problem = Some(e.to_string());
        }
    }
}

async fn read_all(pool: &PgPool, feed: &Feed, tx: &broadcast::Sender<WatchEvent>) -> Result<()> {
    loop {
        let delivered = feed.lock().delivered;
        // The committed head and the rows after `delivered` up to it, in one snapshot:
        // rows up to the committed head are all committed (they commit with it). The
        // head comes on every row, and alone (with no change columns) when nothing is new.
        let rows = sqlx::query(
            "SELECT c.revision, c.key, c.value, c.expires_ns, c.deleted, c.at::TEXT, m.value \
             FROM meta m LEFT JOIN LATERAL (SELECT * FROM changes \
             WHERE revision > $1 AND revision <= m.value ORDER BY revision LIMIT $2) c ON true \
             WHERE m.name = 'revision'",
        )
        .bind(delivered)
        .bind(BATCH)
        .fetch_all(pool)
        .await
        .map_err(|e| backend("reading the change feed", e))?;
        let top = rows
            .first()
            .ok_or_else(|| StoreError::Backend("the revision counter is missing".into()))?;
        let head: i64 = top
            .try_get(6)
            .map_err(|e| backend("reading the change feed", e))?;
        if head < delivered {
            // Lower than what we delivered: another history (see `check_history`).
            tracing::warn!(
                delivered,
                head,
                "change feed: the head went backwards; receivers re-read"
            );
            let _ = tx.send(WatchEvent::Reset);
            let mut s = feed.lock();
            s.delivered = head;
            s.fingerprint = None;
            return Ok(());
        }
        if head == delivered {
            return Ok(());
        }
        let first: Option<i64> = top
            .try_get(0)
            .map_err(|e| backend("reading the change feed", e))?;
        if first != Some(delivered + 1) {
            // Pruned while we were away: say so rather than deliver a partial history.
            tracing::warn!(
                delivered,
                head,
                "change feed: changes were pruned before this server read them; receivers re-read"
            );
            let _ = tx.send(WatchEvent::Reset);
            let mut s = feed.lock();
            s.delivered = head;
            s.fingerprint = None;
            return Ok(());
        }
        let mut last = delivered;
        for row in &rows {
            let (revision, event) = event_from_row(row)?;
            if revision != last + 1 {
                // A hole (rows pruned out of order): the next read resets from here.
                break;
            }
            last = revision;
            let key = match &event {
                WatchEvent::Put(i) => i.key.clone(),
                WatchEvent::Delete { key, .. } => key.clone(),
                WatchEvent::Reset => String::new(),
            };
            let at: String = row
                .try_get(5)
                .map_err(|e| backend("reading the change feed", e))?;
            let _ = tx.send(event);
            let mut s = feed.lock();
            s.delivered = last;
            s.fingerprint = Some((key, at));
        }
        if last >= head {
            return Ok(());
        }
    }
}

fn event_from_row(row: &sqlx::postgres::PgRow) -> Result<(i64, WatchEvent)> {
    let err = |e: sqlx::Error| backend("reading the change feed", e);
    let revision: i64 = row.try_get(0).map_err(err)?;
    let key: String = row.try_get(1).map_err(err)?;
    let deleted: bool = row.try_get(4).map_err(err)?;
    if deleted {
        return Ok((revision, WatchEvent::Delete { key, revision }));
    }
    let value: Option<Vec<u8>> = row.try_get(2).map_err(err)?;
    let expires_ns: Option<i64> = row.try_get(3).map_err(err)?;
    let value = value.ok_or_else(|| {
        StoreError::Backend(format!("change feed revision {revision} has no value"))
    })?;
    Ok((
        revision,
        WatchEvent::Put(Item {
            expires: expiry(&key, expires_ns)?,
            key,
            value,
            revision,
        }),
    ))
}
