//! The console's Overview: counts (as `sigil status`), the audit chain's
//! state, the CA that expires first, and renewals and denials per minute
//! over the last hour, counted from the audit log.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sigil_store::AuditQuery;
use time::OffsetDateTime;

use super::context::Web;
use crate::audit::checkpoint::Integrity;
use crate::keys;

/// The window the per-minute figures cover.
const WINDOW: Duration = Duration::from_secs(3600);
/// Most events read for them; past this the figures are lower bounds.
const MAX_EVENTS: usize = 50_000;

/// Whether an audit event type is a refusal.
fn is_denial(event_type: &str) -> bool {
    event_type.ends_with(".denied") || event_type.ends_with("_refused")
}

/// `GET /web/api/overview`
pub async fn overview(web: Web) -> Response {
    if let Err(r) = web.authorize("status", "read").await {
        return r;
    }
    let s = &web.state;
    let count = |prefix: &'static str| async move { s.store.count(prefix).await.ok() };
    let integrity = match s.checkpoints.integrity() {
        Integrity::Intact => "intact".to_string(),
        Integrity::Checking => "checking".to_string(),
        Integrity::Broken { seq, reason } => format!("BROKEN at seq {seq}: {reason}"),
    };
    let first_ca_expiry = s
        .cas()
        .stored
        .iter()
        .filter_map(|c| {
            let der = sigil_pki::pem_to_ders(c.cert_pem.as_deref()?, "CERTIFICATE")
                .ok()?
                .into_iter()
                .next()?;
            let end = sigil_pki::cert_info(&der).ok()?.not_after;
            Some((end, c.purpose.as_str()))
        })
        .min()
        .map(|(end, purpose)| json!({"purpose": purpose, "not_after": end.unix_timestamp()}));
    // The rates come from the audit log: only for a principal that may read it.
    let rates = if crate::authz::authorize_admin(s, &web.caller, "audit", "list").is_ok() {
        per_minute(&web).await
    } else {
        Value::Null
    };
    // The fleet's make-up needs the instance list right; it is a bounded sample.
    let fleet = if crate::authz::authorize_admin(s, &web.caller, "bot_instance", "list").is_ok() {
        fleet_sample(s).await
    } else {
        Value::Null
    };
    axum::Json(json!({
        "fleet": fleet,
        "cluster": s.cluster,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "bots": s.cache.bots().len(),
        "bot_instances": count(keys::BOT_INSTANCES).await,
        "tokens": count(keys::TOKENS).await,
        "locks": s.cache.locks().len(),
        "audit_integrity": integrity,
        "first_ca_expiry": first_ca_expiry,
        "per_minute": rates,
    }))
    .into_response()
}

/// Most instance records the fleet figures read (one index range scan).
const FLEET_SAMPLE: usize = 2000;
/// A credential ending within this long counts as expiring soon.
const EXPIRING_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// Instances by join method, and how many credentials end within
/// [`EXPIRING_WITHIN`], over the first [`FLEET_SAMPLE`] instance records
/// (`sampled`: the fleet holds more, so the figures cover only those).
async fn fleet_sample(s: &crate::state::AuthState) -> Value {
    let Ok(items) = s
        .store
        .list_page(keys::BOT_INSTANCES, "", FLEET_SAMPLE + 1)
        .await
    else {
        return Value::Null;
    };
    let sampled = items.len() > FLEET_SAMPLE;
    let now = OffsetDateTime::now_utc();
    let soon = now + EXPIRING_WITHIN;
    // The record is kept `instance_retention` past its newest credential.
    let retention = time::Duration::try_from(s.instance_retention).unwrap_or_default();
    let mut by_method = std::collections::BTreeMap::<String, u64>::new();
    let mut expiring = 0u64;
    let mut read = 0u64;
    for item in items.iter().take(FLEET_SAMPLE) {
        let Ok(i) = serde_json::from_slice::<sigil_types::BotInstance>(&item.value) else {
            continue;
        };
        read += 1;
        *by_method.entry(i.spec.join_method.clone()).or_default() += 1;
        if let Some(end) = item.expires.map(|e| e - retention)
            && end > now
            && end <= soon
        {
            expiring += 1;
        }
    }
    json!({
        "by_join_method": by_method,
        "expiring_within_24h": expiring,
        "instances_read": read,
        "sampled": sampled,
    })
}

/// How long the per-minute figures are reused: each computation reads up
/// to [`MAX_EVENTS`] audit rows, which a page reloaded often must not repeat.
const RATES_FOR: Duration = Duration::from_secs(10);

/// The figures last computed, and when (the same for every principal that
/// may read the audit log).
static RATES: std::sync::Mutex<Option<(std::time::Instant, Value)>> = std::sync::Mutex::new(None);

/// [`compute_per_minute`], reused for [`RATES_FOR`].
async fn per_minute(web: &Web) -> Value {
    if let Ok(guard) = RATES.lock()
        && let Some((at, v)) = guard.as_ref()
        && at.elapsed() < RATES_FOR
    {
        return v.clone();
    }
    let v = compute_per_minute(web).await;
    if !v.is_null()
        && let Ok(mut guard) = RATES.lock()
    {
        *guard = Some((std::time::Instant::now(), v.clone()));
    }
    v
}

/// Renewals and denials in each of the last 60 minutes (oldest first); an
/// aggregated flood of denials counts as its `count`.
async fn compute_per_minute(web: &Web) -> Value {
    let now = OffsetDateTime::now_utc();
    let since = now - WINDOW;
    let Ok(events) = web
        .state
        .store
        .audit_query(AuditQuery {
            since: Some(since),
            event_type: None,
            after_seq: None,
            limit: Some(MAX_EVENTS),
        })
        .await
    else {
        return Value::Null;
    };
    let minutes = (WINDOW.as_secs() / 60) as usize;
    let (mut renewals, mut denials) = (vec![0u64; minutes], vec![0u64; minutes]);
    for e in &events {
        let i = ((e.time - since).whole_seconds().max(0) / 60) as usize;
        let Some(i) = (i < minutes).then_some(i) else {
            continue;
        };
        let n = e.fields.get("count").and_then(Value::as_u64).unwrap_or(1);
        if e.event_type == crate::audit::RENEWAL {
            renewals[i] += n;
        } else if is_denial(&e.event_type) {
            denials[i] += n;
        }
    }
    json!({
        "since": since.unix_timestamp(),
        "renewals": renewals,
        "denials": denials,
        "lower_bound": events.len() >= MAX_EVENTS,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn denials_are_named_so() {
        for t in [
            "bot.join.denied",
            "admin.denied",
            "web.csrf_refused",
            "web.login.denied",
        ] {
            assert!(super::is_denial(t), "{t}");
        }
        for t in ["bot.renewal", "lock.created", "web.login"] {
            assert!(!super::is_denial(t), "{t}");
        }
    }
}
