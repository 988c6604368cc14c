//! `ReportAppRequests`: the proxy's `app.request` audit events, recorded for
//! the apps it may serve only (a proxy cannot write events about others).

use sigil_pki::ClientIdentity;
use sigil_proto::v1::{ReportAppRequestsRequest, ReportAppRequestsResponse};
use sigil_store::Txn;
use tonic::Status;

use crate::audit;
use crate::state::AuthState;

/// At most this many records in one report.
pub const MAX_RECORDS: usize = 10_000;

fn shown(s: &str, max: usize) -> String {
    sigil_types::text::escape_unsafe(&s.chars().take(max).collect::<String>()).into_owned()
}

/// Record a batch.
pub async fn report(
    state: &AuthState,
    proxy: &ClientIdentity,
    req: &ReportAppRequestsRequest,
) -> Result<ReportAppRequestsResponse, Status> {
    if req.records.len() > MAX_RECORDS {
        return Err(Status::invalid_argument(format!(
            "records: at most {MAX_RECORDS} in one report"
        )));
    }
    let served: std::collections::BTreeSet<String> = super::served_apps(state, proxy)?
        .into_iter()
        .map(|a| a.metadata.name)
        .collect();
    let mut events = Vec::with_capacity(req.records.len());
    // Records about apps this proxy does not serve (any longer: an app
    // deleted or relabelled while it had traffic) are not written as if they
    // were, and do not fail the batch, which the proxy would retry for ever;
    // how many were skipped is audited.
    let mut skipped = 0u64;
    for r in &req.records {
        // An unknown app (404) is reported with an empty name.
        if !r.app.is_empty() && !served.contains(&r.app) {
            skipped += 1;
            continue;
        }
        let mut fields = serde_json::json!({
            "app": r.app, "method": shown(&r.method, 16), "path": shown(&r.path, 256),
            "status": r.status, "bot": shown(&r.bot, 253), "bot_instance": shown(&r.instance, 64),
            "latency_micros": r.latency_micros, "proxy": proxy.bot,
            "proxy_instance": proxy.instance_id,
        });
        if let Some(m) = fields.as_object_mut() {
            if !r.reason.is_empty() {
                m.insert("reason".into(), shown(&r.reason, 512).into());
            }
            if !r.spiffe_id.is_empty() {
                m.insert("spiffe_id".into(), shown(&r.spiffe_id, 2048).into());
            }
            if r.count > 1 {
                m.insert("count".into(), r.count.into());
            }
        }
        events.push(audit::event(super::APP_REQUEST, fields));
    }
    if skipped > 0 {
        events.push(audit::event(
            super::APP_REPORT_SKIPPED,
            serde_json::json!({
                "proxy": proxy.bot, "proxy_instance": proxy.instance_id,
                "skipped_records": skipped,
                "reason": "records about apps this proxy does not serve",
            }),
        ));
    }
    if !events.is_empty() {
        state
            .store
            .commit(Txn {
                ops: Vec::new(),
                audit: events,
            })
            .await
            .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    }
    Ok(ReportAppRequestsResponse {})
}
