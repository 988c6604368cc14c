//! Per-request audit (`app.request`): denials always, one event each;
//! allowed requests all, sampled or aggregated (config `audit.allowed`), so
//! a busy app cannot flood the log. Sent in batches to `ReportAppRequests`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sigil_proto::v1::{AppRequestRecord, ReportAppRequestsRequest};

use crate::access::Access;
use crate::config::{AllowedAudit, AuditConfig};

/// At most this many records wait for a flush; beyond, allowed ones are dropped
/// (counted in `sigil_proxy_audit_dropped_total`), denials are kept.
const MAX_PENDING: usize = 50_000;
/// At most this many records in one report (the auth service takes 10,000).
const MAX_BATCH: usize = 5_000;

/// At most this many (bot, status) counters of misdirected requests per
/// flush; beyond, they are dropped (counted in
/// `sigil_proxy_audit_dropped_total`).
const MAX_MISDIRECTED_KEYS: usize = 10_000;

/// (app, bot, instance, SPIFFE ID, status).
type AggregateKey = (String, String, String, String, u32);

/// (bot, status) of a 404/421 → (count, total latency, the first one).
type Misdirected = HashMap<(String, u32), (u64, u64, AppRequestRecord)>;

/// Whether a status is a request for no app (404) or the wrong one (421):
/// aggregated, since any caller (a locked one too) can send them at will.
pub fn is_misdirected(status: u32) -> bool {
    matches!(status, 404 | 421)
}

/// The audit queue.
pub struct Auditor {
    cfg: AuditConfig,
    seen: AtomicU64,
    pending: Mutex<Vec<AppRequestRecord>>,
    /// → (count, total latency).
    aggregate: Mutex<HashMap<AggregateKey, (u64, u64)>>,
    misdirected: Mutex<Misdirected>,
}

impl Auditor {
    pub fn new(cfg: AuditConfig) -> Arc<Auditor> {
        Arc::new(Auditor {
            cfg,
            seen: AtomicU64::new(0),
            pending: Mutex::default(),
            aggregate: Mutex::default(),
            misdirected: Mutex::default(),
        })
    }

    /// Whether the record of a request answered `status` (a non-empty
    /// `reason` marks a denial) is kept: denials and misdirected requests
    /// always, allowed ones per `audit.allowed` (a sample counted here).
    /// Asked first, so that a record sampled out is never built.
    pub fn keeps(&self, status: u32, reason: &str) -> bool {
        if is_misdirected(status) || !reason.is_empty() || status == 403 {
            return true;
        }
        match self.cfg.allowed {
            AllowedAudit::All | AllowedAudit::Aggregate => true,
            AllowedAudit::Sample => self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.cfg.sample_every),
        }
    }

    /// Record one request; `r.reason` non-empty marks a denial.
    #[cfg(test)]
    pub fn record(&self, r: AppRequestRecord) {
        if self.keeps(r.status, &r.reason) {
            self.add(r);
        }
    }

    /// Add a record [`Auditor::keeps`] kept.
    pub fn add(&self, r: AppRequestRecord) {
        if is_misdirected(r.status) {
            let mut m = self.misdirected.lock().unwrap_or_else(|p| p.into_inner());
            let key = (r.bot.clone(), r.status);
            if let Some(e) = m.get_mut(&key) {
                e.0 += 1;
                e.1 += r.latency_micros;
            } else if m.len() < MAX_MISDIRECTED_KEYS {
                m.insert(key, (1, r.latency_micros, r));
            } else {
                metrics::counter!("sigil_proxy_audit_dropped_total").increment(1);
            }
            return;
        }
        let denied = !r.reason.is_empty() || r.status == 403;
        if !denied {
            match self.cfg.allowed {
                AllowedAudit::All | AllowedAudit::Sample => {}
                AllowedAudit::Aggregate => {
                    let mut agg = self.aggregate.lock().unwrap_or_else(|p| p.into_inner());
                    let e = agg
                        .entry((r.app, r.bot, r.instance, r.spiffe_id, r.status))
                        .or_insert((0, 0));
                    e.0 += 1;
                    e.1 += r.latency_micros;
                    return;
                }
            }
        }
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() >= MAX_PENDING && !denied {
            metrics::counter!("sigil_proxy_audit_dropped_total").increment(1);
            return;
        }
        p.push(r);
    }

    fn take(&self) -> Vec<AppRequestRecord> {
        let mut out = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let agg = std::mem::take(&mut *self.aggregate.lock().unwrap_or_else(|p| p.into_inner()));
        for ((app, bot, instance, spiffe_id, status), (count, total)) in agg {
            out.push(AppRequestRecord {
                app,
                method: String::new(),
                path: String::new(),
                status,
                bot,
                instance,
                latency_micros: total / count.max(1),
                reason: String::new(),
                count,
                spiffe_id,
            });
        }
        let mis = std::mem::take(&mut *self.misdirected.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, (count, total, sample)) in mis {
            out.push(AppRequestRecord {
                latency_micros: total / count.max(1),
                count,
                ..sample
            });
        }
        out
    }

    /// Send batches for the proxy's life; a failed batch is retried next time.
    pub async fn flush_loop(self: Arc<Self>, access: Arc<Access>) {
        let mut tick = tokio::time::interval(self.cfg.flush_every.0);
        let mut carry: Vec<AppRequestRecord> = Vec::new();
        loop {
            tick.tick().await;
            carry.extend(self.take());
            if carry.is_empty() {
                continue;
            }
            let Some(mut c) = access.reporter_client() else {
                continue;
            };
            let batch: Vec<AppRequestRecord> = carry.drain(..carry.len().min(MAX_BATCH)).collect();
            if let Err(e) = c
                .report_app_requests(ReportAppRequestsRequest {
                    records: batch.clone(),
                })
                .await
            {
                // Refused as such: retrying the same batch cannot succeed, and
                // would hold back every later record.
                if matches!(
                    e.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) {
                    tracing::error!(error = %e.message(), records = batch.len(), "audit report refused; dropping this batch");
                    continue;
                }
                tracing::warn!(error = %e.message(), records = batch.len(), "audit report failed; retrying");
                let mut keep = batch;
                keep.append(&mut carry);
                keep.truncate(MAX_PENDING);
                carry = keep;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: u32, reason: &str) -> AppRequestRecord {
        AppRequestRecord {
            app: "grafana".into(),
            bot: "ci".into(),
            status,
            reason: reason.into(),
            latency_micros: 10,
            ..Default::default()
        }
    }

    fn auditor(allowed: AllowedAudit, sample_every: u64) -> Arc<Auditor> {
        Auditor::new(AuditConfig {
            allowed,
            sample_every,
            ..AuditConfig::default()
        })
    }

    #[test]
    fn denials_always_allowed_sampled_or_aggregated() {
        let a = auditor(AllowedAudit::Sample, 10);
        for _ in 0..25 {
            a.record(rec(200, ""));
        }
        a.record(rec(403, "no role's app_labels match"));
        a.record(rec(503, "authorization unavailable"));
        let got = a.take();
        assert_eq!(got.iter().filter(|r| r.status == 200).count(), 3);
        assert_eq!(got.iter().filter(|r| !r.reason.is_empty()).count(), 2);

        let a = auditor(AllowedAudit::Aggregate, 1);
        for _ in 0..5 {
            a.record(rec(200, ""));
        }
        a.record(rec(404, "no app answers"));
        a.record(rec(403, "denied"));
        let mut got = a.take();
        got.sort_by_key(|r| r.status);
        let counts: Vec<(u32, u64)> = got.iter().map(|r| (r.status, r.count)).collect();
        // The denial stays a single event with its reason; the rest are counted.
        assert_eq!(counts, [(200, 5), (403, 0), (404, 1)]);
        assert_eq!(got[1].reason, "denied");
        assert!(a.take().is_empty());

        let a = auditor(AllowedAudit::All, 100);
        for _ in 0..3 {
            a.record(rec(200, ""));
        }
        assert_eq!(a.take().len(), 3);
    }

    #[test]
    fn misdirected_requests_are_counted_per_bot_and_status_with_a_sample() {
        let a = auditor(AllowedAudit::All, 1);
        for i in 0..1000 {
            let mut r = rec(if i % 2 == 0 { 404 } else { 421 }, "no app answers");
            r.path = format!("/{i}");
            a.record(r);
        }
        let mut other = rec(404, "no app answers");
        other.bot = "web".into();
        a.record(other);
        let mut got = a.take();
        got.sort_by_key(|r| (r.bot.clone(), r.status));
        let seen: Vec<(&str, u32, u64)> = got
            .iter()
            .map(|r| (r.bot.as_str(), r.status, r.count))
            .collect();
        assert_eq!(seen, [("ci", 404, 500), ("ci", 421, 500), ("web", 404, 1)]);
        assert_eq!(got[0].path, "/0", "the first one is the sample");
        assert_eq!(got[0].reason, "no app answers");
        // Bounded however many distinct bots a flood names.
        for i in 0..(MAX_MISDIRECTED_KEYS + 10) {
            let mut r = rec(404, "x");
            r.bot = format!("b{i}");
            a.record(r);
        }
        assert_eq!(a.take().len(), MAX_MISDIRECTED_KEYS);
    }
}
