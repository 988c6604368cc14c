//! Aggregation of floods of identical denials.
//!
//! A client retrying a refused join or renewal in a loop would otherwise write one audit
//! row per attempt. Two denials are *identical* when they have the same type and the same
//! fields, ignoring the time and the source port of `remote_addr` (every connection has
//! a new one). The first of a kind is written at once, as usual. Identical ones that
//! follow within [`WINDOW`] are counted instead, and when the window ends (or at
//! shutdown) one row is written with the same type and fields plus `count` (how many it
//! stands for), `first_time` and `last_time`. So every denial is accounted for — the
//! plain rows plus the `count`s add up to the number of denials — and a distinct denial
//! is never absorbed into another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sigil_store::{NewAuditEvent, Store, Txn};
use time::OffsetDateTime;

/// How long identical denials after the first are counted before their row is written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct denials tracked at once; beyond this, denials are written one row each
/// (never dropped), so memory stays bounded under a flood of distinct ones.
const MAX_TRACKED: usize = 10_000;

struct Entry {
    opened: Instant,
    event_type: String,
    fields: serde_json::Value,
    repeats: u64,
    first: Option<OffsetDateTime>,
    last: Option<OffsetDateTime>,
}

/// The pure state machine (no I/O), driven by [`Denials`].
#[derive(Default)]
pub struct Aggregator {
    open: HashMap<String, Entry>,
}

impl Aggregator {
    /// Offers a denial at `now`: returns it if it must be written now (the first of its
    /// kind in a window), `None` if it was counted into an open window.
    pub fn offer(&mut self, ev: NewAuditEvent, now: Instant) -> Option<NewAuditEvent> {
        let fields = normalized(&ev.fields);
        let key = format!("{}\n{}", ev.event_type, fields);
        if let Some(e) = self.open.get_mut(&key) {
            e.repeats += 1;
            if e.first.is_none() {
                e.first = Some(ev.time);
            }
            e.last = Some(ev.time);
            return None;
        }
        if self.open.len() < MAX_TRACKED {
            self.open.insert(
                key,
                Entry {
                    opened: now,
                    event_type: ev.event_type.clone(),
                    fields,
                    repeats: 0,
                    first: None,
                    last: None,
                },
            );
        }
        Some(ev)
    }

    /// Closes windows older than [`WINDOW`] (every window with `all`), returning one
    /// aggregate row for each that counted repeats.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<NewAuditEvent> {
        let mut out = Vec::new();
        self.open.retain(|_, e| {
            if !all && now.duration_since(e.opened) < WINDOW {
                return true;
            }
            if let (Some(first), Some(last)) = (e.first, e.last)
                && e.repeats > 0
            {
                let mut fields = e.fields.clone();
                if let Some(m) = fields.as_object_mut() {
                    m.insert("count".into(), e.repeats.into());
                    m.insert("first_time".into(), rfc3339(first).into());
                    m.insert("last_time".into(), rfc3339(last).into());
                }
                out.push(NewAuditEvent {
                    time: last,
                    event_type: e.event_type.clone(),
                    fields,
                });
            }
            false
        });
        out
    }
}

/// The fields that make two denials identical: `remote_addr` loses its port.
fn normalized(fields: &serde_json::Value) -> serde_json::Value {
    let mut f = fields.clone();
    if let Some(addr) = f.get_mut("remote_addr")
        && let Some(s) = addr.as_str()
        && let Ok(sa) = s.parse::<std::net::SocketAddr>()
    {
        *addr = sa.ip().to_string().into();
    }
    f
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// [`Aggregator`] writing to the store.
#[derive(Default)]
pub struct Denials {
    agg: Mutex<Aggregator>,
}

impl Denials {
    /// Audits a denial (or counts it into an open window).
    pub async fn record(&self, store: &dyn Store, ev: NewAuditEvent) {
        let now_write = self
            .agg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(ev, Instant::now());
        if let Some(ev) = now_write {
            write(store, vec![ev]).await;
        }
    }

    /// Writes the rows of closed windows (all windows with `all`, at shutdown).
    pub async fn flush(&self, store: &dyn Store, all: bool) {
        let rows = self
            .agg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(Instant::now(), all);
        if !rows.is_empty() {
            write(store, rows).await;
        }
    }
}

async fn write(store: &dyn Store, audit: Vec<NewAuditEvent>) {
    if let Err(e) = store.commit(Txn { ops: vec![], audit }).await {
        tracing::error!(error = %e, "failed to audit a denial");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t: i64, reason: &str, remote: &str) -> NewAuditEvent {
        NewAuditEvent {
            time: OffsetDateTime::from_unix_timestamp(t).expect("time"),
            event_type: "bot.join.denied".into(),
            fields: json!({"reason": reason, "remote_addr": remote, "method": "token"}),
        }
    }

    #[test]
    fn repeats_are_counted_and_flushed_once_the_window_ends() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        assert!(a.offer(ev(100, "bad token", "10.0.0.1:1000"), t0).is_some());
        for i in 0..5 {
            let port = format!("10.0.0.1:{}", 2000 + i);
            assert!(a.offer(ev(101 + i, "bad token", &port), t0).is_none());
        }
        assert!(
            a.due(t0 + WINDOW / 2, false).is_empty(),
            "window still open"
        );
        let rows = a.due(t0 + WINDOW, false);
        assert_eq!(rows.len(), 1);
        let f = &rows[0].fields;
        assert_eq!(f["count"], 5);
        assert_eq!(f["first_time"], "1970-01-01T00:01:41Z");
        assert_eq!(f["last_time"], "1970-01-01T00:01:45Z");
        assert_eq!(f["remote_addr"], "10.0.0.1");
        assert_eq!(f["reason"], "bad token");
        // The window closed: the next one is written at once again.
        assert!(
            a.offer(ev(200, "bad token", "10.0.0.1:3000"), t0 + WINDOW)
                .is_some()
        );
    }

    #[test]
    fn distinct_denials_are_never_absorbed() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        assert!(a.offer(ev(1, "bad token", "10.0.0.1:1"), t0).is_some());
        assert!(a.offer(ev(2, "expired", "10.0.0.1:2"), t0).is_some());
        assert!(a.offer(ev(3, "bad token", "10.0.0.2:3"), t0).is_some());
        let mut other = ev(4, "bad token", "10.0.0.1:4");
        other.event_type = "bot.renewal.denied".into();
        assert!(a.offer(other, t0).is_some());
        assert!(
            a.due(t0 + WINDOW, true).is_empty(),
            "nothing repeated, no aggregate rows"
        );
    }

    #[test]
    fn shutdown_flushes_open_windows() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        a.offer(ev(1, "x", "local"), t0);
        a.offer(ev(2, "x", "local"), t0);
        a.offer(ev(3, "x", "local"), t0);
        let rows = a.due(t0, true);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].fields["count"], 2);
        assert_eq!(rows[0].fields["remote_addr"], "local");
    }
}
