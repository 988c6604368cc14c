//! Per-request audit (`app.request`): every denial is recorded, the first
//! [`DENIALS_KEPT_PER_KEY`] of each kind per flush one event each with its
//! method and path, the rest counted on one event of that kind; allowed
//! requests all, sampled or aggregated (config `audit.allowed`), so a busy
//! app — or a caller sending requests it knows are refused — cannot flood
//! the log or the proxy's memory. Sent in batches to `ReportAppRequests`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sigil_proto::v1::{AppRequestRecord, ReportAppRequestsRequest};

use crate::access::Access;
use crate::config::{AllowedAudit, AuditConfig};

/// At most this many records wait for a flush; beyond, allowed ones are
/// dropped (counted in `sigil_proxy_audit_dropped_total`) and denials are
/// counted on their kind's aggregate event.
const MAX_PENDING: usize = 50_000;
/// Denials of one kind (app, caller, status, reason) kept as single events
/// per flush; the rest of that kind are counted on one event.
const DENIALS_KEPT_PER_KEY: u32 = 10;
/// At most this many kinds of denial per flush; beyond, a denial of a new
/// kind is dropped and counted in `sigil_proxy_audit_dropped_total`
/// (a kind is keyed by names from certificates the CA issued, so reaching
/// this takes very many distinct callers).
const MAX_DENIAL_KEYS: usize = 10_000;
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

/// (app, bot, instance, SPIFFE ID, status, reason) of a denial.
type DenialKey = (String, String, String, String, u32, String);

/// One kind of denial this flush: how many were kept as single events, and
/// the count, total latency and first of those beyond.
#[derive(Default)]
struct Denials {
    kept: u32,
    over: Option<(u64, u64, AppRequestRecord)>,
}

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
    denials: Mutex<HashMap<DenialKey, Denials>>,
}

impl Auditor {
    pub fn new(cfg: AuditConfig) -> Arc<Auditor> {
        Arc::new(Auditor {
            cfg,
            seen: AtomicU64::new(0),
            pending: Mutex::default(),
            aggregate: Mutex::default(),
            misdirected: Mutex::default(),
            denials: Mutex::default(),
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
        if denied {
            self.add_denial(r);
            return;
        }
        if self.cfg.allowed == AllowedAudit::Aggregate {
            let mut agg = self.aggregate.lock().unwrap_or_else(|p| p.into_inner());
            let e = agg
                .entry((r.app, r.bot, r.instance, r.spiffe_id, r.status))
                .or_insert((0, 0));
            e.0 += 1;
            e.1 += r.latency_micros;
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() >= MAX_PENDING {
            metrics::counter!("sigil_proxy_audit_dropped_total").increment(1);
            return;
        }
        p.push(r);
    }

    /// A denial: a single event while its kind is under
    /// [`DENIALS_KEPT_PER_KEY`] this flush and the queue has room, else
    /// counted on its kind's aggregate event.
    fn add_denial(&self, r: AppRequestRecord) {
        let key: DenialKey = (
            r.app.clone(),
            r.bot.clone(),
            r.instance.clone(),
            r.spiffe_id.clone(),
            r.status,
            r.reason.clone(),
        );
        let mut d = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        let full = d.len() >= MAX_DENIAL_KEYS;
        let kind = match d.get_mut(&key) {
            Some(k) => k,
            None if full => {
                metrics::counter!("sigil_proxy_audit_dropped_total").increment(1);
                return;
            }
            None => d.entry(key).or_default(),
        };
        if kind.kept < DENIALS_KEPT_PER_KEY {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.len() < MAX_PENDING {
                kind.kept += 1;
                p.push(r);
                return;
            }
        }
        match &mut kind.over {
            Some((count, total, _)) => {
                *count += 1;
                *total += r.latency_micros;
            }
            None => kind.over = Some((1, r.latency_micros, r)),
        }
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
        let denials = std::mem::take(&mut *self.denials.lock().unwrap_or_else(|p| p.into_inner()));
        for (count, total, sample) in denials.into_values().filter_map(|d| d.over) {
            out.push(AppRequestRecord {
                latency_micros: total / count.max(1),
                count,
                ..sample
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

    #[test]
    fn a_flood_of_denials_is_counted_beyond_the_first_of_each_kind() {
        let a = auditor(AllowedAudit::All, 1);
        for i in 0..1000 {
            let mut r = rec(403, "no role's app_labels match");
            r.path = format!("/{i}");
            a.record(r);
        }
        let mut other = rec(403, "the bot is locked");
        other.bot = "web".into();
        a.record(other);
        let got = a.take();
        // Ten single events of the flooded kind with their paths, one
        // counting the other 990 (its first as the sample), one of the other.
        let singles: Vec<&str> = got
            .iter()
            .filter(|r| r.bot == "ci" && r.count == 0)
            .map(|r| r.path.as_str())
            .collect();
        assert_eq!(singles.len(), DENIALS_KEPT_PER_KEY as usize);
        assert_eq!(singles[0], "/0");
        let counted: Vec<(&str, u64)> = got
            .iter()
            .filter(|r| r.count > 0)
            .map(|r| (r.path.as_str(), r.count))
            .collect();
        assert_eq!(counted, [("/10", 990)]);
        assert!(
            got.iter()
                .any(|r| r.bot == "web" && r.reason == "the bot is locked")
        );
        assert_eq!(got.len(), DENIALS_KEPT_PER_KEY as usize + 2);
        // Each flush starts the kinds afresh.
        a.record(rec(403, "no role's app_labels match"));
        assert_eq!(a.take().len(), 1);
        // Bounded however many kinds a flood names; the queue too.
        for i in 0..(MAX_DENIAL_KEYS + 10) {
            let mut r = rec(403, "x");
            r.bot = format!("b{i}");
            a.record(r);
        }
        assert_eq!(a.take().len(), MAX_DENIAL_KEYS);
    }
}
