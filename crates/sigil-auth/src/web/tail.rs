//! The audit page's live tail: server-sent events, one per new audit event
//! (its `id` is the event's seq, so a reconnecting browser resumes where it
//! stopped). The stream ends when the session does, or when the principal
//! loses `audit list`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sigil_store::AuditQuery;

use super::api::{bad, query};
use super::context::Web;
use super::session;
use crate::authz;

/// How often the log is polled for new events.
const POLL: Duration = Duration::from_secs(1);
/// Events read per poll.
const BATCH: usize = 200;

/// Most live tails one session may hold open on one server.
const TAILS_PER_SESSION: usize = 4;

/// Open tails per session (by its store key), on this server.
static OPEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// One open tail, counted until the stream is dropped.
struct Slot(String);

impl Slot {
    fn take(key: &str) -> Option<Slot> {
        let mut open = OPEN.lock().ok()?;
        let n = open.entry(key.to_string()).or_default();
        if *n >= TAILS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(Slot(key.to_string()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = OPEN.lock()
            && let Some(n) = open.get_mut(&self.0)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.0);
            }
        }
    }
}

struct Tail {
    _slot: Slot,
    web: Web,
    after: i64,
    event_type: Option<String>,
    bot: Option<String>,
    pending: VecDeque<(i64, String)>,
}

/// `GET /web/api/audit/tail?type=T&bot=B&after=SEQ` (or `Last-Event-ID`).
pub async fn tail(web: Web, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = web.authorize("audit", "list").await {
        return r;
    }
    let q = query(&uri);
    let get = |k: &str| {
        q.get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| get("after"));
    let after = match resume.map(|a| a.parse::<i64>()) {
        Some(Ok(a)) if a >= 0 => a,
        Some(_) => return bad("after: an audit seq"),
        None => match web.state.store.audit_head().await {
            Ok((seq, _)) => seq,
            Err(e) => return super::context::unavailable("reading the audit head", &e),
        },
    };
    let Some(slot) = Slot::take(web.session.key()) else {
        return super::context::error(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            &format!("this session has {TAILS_PER_SESSION} live tails open already: close one"),
        );
    };
    let start = Tail {
        _slot: slot,
        event_type: get("type"),
        bot: get("bot"),
        web,
        after,
        pending: VecDeque::new(),
    };
    let stream = futures::stream::unfold(start, |mut t| async move {
        loop {
            if let Some((seq, json)) = t.pending.pop_front() {
                let ev = Event::default().id(seq.to_string()).data(json);
                return Some((Ok::<_, Infallible>(ev), t));
            }
            tokio::time::sleep(POLL).await;
            let state = &t.web.state;
            // The principal is checked afresh, as for any request: a lock on
            // its bot, instance or role, its removal, a rotated-out client CA
            // or a lost `audit list` ends the stream.
            if !session::alive(state, &t.web.session).await {
                return None;
            }
            let Ok(caller) = session::caller(state, &t.web.session, &t.web.remote).await else {
                return None;
            };
            if authz::authorize_admin(state, &caller, "audit", "list").is_err() {
                return None;
            }
            let records = state
                .store
                .audit_query(AuditQuery {
                    since: None,
                    event_type: t.event_type.clone(),
                    after_seq: Some(t.after),
                    limit: Some(BATCH),
                })
                .await
                .unwrap_or_default();
            for r in records {
                t.after = t.after.max(r.seq);
                if !matches_bot(&r.fields, t.bot.as_deref()) {
                    continue;
                }
                if let Ok(json) = serde_json::to_string(&r) {
                    t.pending.push_back((r.seq, json));
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Whether an event concerns `bot` (no filter: every event).
pub fn matches_bot(fields: &Value, bot: Option<&str>) -> bool {
    match bot {
        None => true,
        Some(b) => {
            fields.get("bot").and_then(Value::as_str) == Some(b)
                || fields.get("by").and_then(Value::as_str) == Some(&format!("bot:{b}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_at_most_its_share_of_tails() {
        let key = "test-session-key-for-the-tail-cap";
        let held: Vec<Slot> = (0..TAILS_PER_SESSION)
            .map(|_| Slot::take(key).expect("a slot"))
            .collect();
        assert!(Slot::take(key).is_none(), "one tail too many");
        assert!(Slot::take("another-session").is_some());
        drop(held);
        assert!(Slot::take(key).is_some(), "closed tails free their slots");
        assert!(!OPEN.lock().unwrap().contains_key(key));
    }
}
