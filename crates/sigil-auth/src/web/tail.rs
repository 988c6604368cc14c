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

struct Tail {
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
    let start = Tail {
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
