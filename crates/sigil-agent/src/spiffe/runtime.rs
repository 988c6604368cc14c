//! The agent side of workload identity: SVIDs issued by the auth service,
//! cached per (selector, workload attributes, kind) so that many processes of
//! one workload share one issuance, re-issued at half-life and when policy
//! changes, plus the trust state (bundle, CRL, locks) the auth service pushes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::federated::FederatedView;
use super::federated::federated_views;
use crate::client::AuthChannel as Channel;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::{
    IssueWorkloadIdentitiesRequest, LabelValues, TrustBundle, WatchWorkloadStateRequest,
    WorkloadState,
};
use sigil_types::{Attributes, WorkloadIdentitySelector};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::Status;
use zeroize::Zeroizing;

/// How long an entry nobody subscribes to or asked for is kept.
const IDLE_EXPIRY: Duration = Duration::from_secs(600);
/// How long a first request waits for the auth service's state stream.
const FIRST_STATE_WAIT: Duration = Duration::from_secs(3);
/// How often subscribed entries are checked for renewal.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);
/// What a workload hears when no identity's rules allow it. The rules and
/// the reasons stay in the agent's log and the audit log: a workload must
/// not learn the policy by probing it.
pub const NO_IDENTITY: &str =
    "no workload identity is granted to this workload (the agent's log has the reason)";
/// What a workload hears when the auth service refused this agent.
pub const REFUSED_BY_AUTH: &str =
    "the auth service refused to issue workload identities (the agent's log has the reason)";

/// What the auth service says about trust right now.
#[derive(Clone, Debug, Default)]
pub struct TrustView {
    pub trust_domain: String,
    pub sequence: u64,
    /// DER CA certificates, concatenated (the Workload API's bundle encoding).
    pub bundle_der: Vec<u8>,
    pub authorities: Vec<Vec<u8>>,
    pub jwks: serde_json::Value,
    pub jwks_bytes: Vec<u8>,
    /// DER CRLs, one per trusted CA (none when nothing is revoked).
    pub crls: Vec<Vec<u8>>,
    /// Serials in the CRL (lowercase hex).
    pub revoked: BTreeSet<String>,
    /// Set when the bot, its instance or a role is locked: serve nothing.
    pub locked: Option<String>,
    pub locked_ids: BTreeSet<String>,
    pub policy_revision: u64,
    /// Whether the auth service's state stream has been heard from yet.
    pub state_seen: bool,
    /// Bundles of federated (foreign) trust domains, by trust domain name.
    pub federated: BTreeMap<String, FederatedView>,
}

impl TrustView {
    /// The trust domain's SPIFFE ID, the key of bundle maps.
    pub fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }
}

/// One X.509-SVID with its private key.
pub struct X509Item {
    pub name: String,
    pub spiffe_id: String,
    pub hint: String,
    pub cert_der: Vec<u8>,
    /// Certificates to send after it (an imported intermediate CA's chain).
    pub chain_der: Vec<Vec<u8>>,
    pub serial_hex: String,
    pub key_pkcs8_der: Arc<Zeroizing<Vec<u8>>>,
    pub expires: OffsetDateTime,
    /// Foreign trust domains whose bundles go with this SVID.
    pub federates_with: Vec<String>,
}

impl X509Item {
    /// The SVID first, then its chain.
    pub fn chain(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.cert_der.as_slice()).chain(self.chain_der.iter().map(Vec::as_slice))
    }
}

/// One JWT-SVID.
pub struct JwtItem {
    pub spiffe_id: String,
    pub hint: String,
    pub token: Zeroizing<String>,
    pub expires: OffsetDateTime,
}

/// One issuance for an entry.
pub struct Issued {
    pub x509: Vec<X509Item>,
    pub jwt: Vec<JwtItem>,
    /// Half the shortest lifetime: when to issue again.
    pub refresh_at: OffsetDateTime,
    pub expires: OffsetDateTime,
    pub policy_revision: u64,
}

impl Issued {
    /// Whether it should be issued again now: half its life is over, policy
    /// changed, or one of its certificates was revoked.
    pub fn stale(&self, view: &TrustView) -> bool {
        OffsetDateTime::now_utc() >= self.refresh_at
            || self.policy_revision != view.policy_revision
            || self
                .x509
                .iter()
                .any(|x| view.revoked.contains(&x.serial_hex))
    }
}

/// The state of an entry that subscribers follow.
#[derive(Clone)]
pub enum EntryState {
    /// Not issued yet.
    Empty,
    Ready(Arc<Issued>),
    /// The auth service refused (no identity matches, or a lock), under this
    /// policy revision; reconsidered when the revision moves.
    Denied(String, u64),
}

/// What is issued.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    X509,
    Jwt {
        audiences: Vec<String>,
        spiffe_id: String,
    },
}

/// Workloads with equal keys share SVIDs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryKey {
    /// The selector, JSON-encoded (hashable).
    pub selector: String,
    pub attrs: Attributes,
    pub kind: EntryKind,
}

impl EntryKey {
    pub fn new(
        selector: Option<&WorkloadIdentitySelector>,
        attrs: Attributes,
        kind: EntryKind,
    ) -> Self {
        EntryKey {
            selector: selector
                .and_then(|s| serde_json::to_string(s).ok())
                .unwrap_or_default(),
            attrs,
            kind,
        }
    }
}

/// A cache entry; subscribers see every re-issue.
pub struct Entry {
    pub key: EntryKey,
    selector: Option<WorkloadIdentitySelector>,
    state: watch::Sender<EntryState>,
    issuing: Arc<tokio::sync::Mutex<()>>,
    last_used: Mutex<Instant>,
}

impl Entry {
    pub fn subscribe(&self) -> watch::Receiver<EntryState> {
        self.state.subscribe()
    }
    pub fn current(&self) -> EntryState {
        self.state.borrow().clone()
    }
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
    /// The current issuance if it is still good to hand out.
    fn fresh(&self, view: &TrustView) -> Option<Arc<Issued>> {
        match &*self.state.borrow() {
            EntryState::Ready(i) if !i.stale(view) => Some(i.clone()),
            _ => None,
        }
    }
}

/// Shared by the Workload API, SDS and the workload identity outputs.
pub struct Runtime {
    client: watch::Receiver<Option<AuthServiceClient<Channel>>>,
    trust: watch::Sender<Arc<TrustView>>,
    entries: Mutex<HashMap<EntryKey, Arc<Entry>>>,
}

impl Runtime {
    /// `client` carries the agent's current mTLS client (replaced on renewal).
    pub fn new(
        trust_domain: String,
        client: watch::Receiver<Option<AuthServiceClient<Channel>>>,
    ) -> Arc<Runtime> {
        let view = TrustView {
            trust_domain,
            ..Default::default()
        };
        Arc::new(Runtime {
            client,
            trust: watch::channel(Arc::new(view)).0,
            entries: Mutex::default(),
        })
    }

    /// Start following the auth service's state and renewing subscribed entries.
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().follow_state()),
            tokio::spawn(self.clone().maintain()),
        ]
    }

    pub fn trust(&self) -> Arc<TrustView> {
        self.trust.borrow().clone()
    }
    pub fn subscribe_trust(&self) -> watch::Receiver<Arc<TrustView>> {
        self.trust.subscribe()
    }

    fn client(&self) -> Result<AuthServiceClient<Channel>, Status> {
        self.client
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("the agent has not joined yet"))
    }

    /// The entry for `key`, created empty if new.
    pub fn entry(&self, key: EntryKey, selector: Option<&WorkloadIdentitySelector>) -> Arc<Entry> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    key,
                    selector: selector.cloned(),
                    state: watch::channel(EntryState::Empty).0,
                    issuing: Arc::new(tokio::sync::Mutex::new(())),
                    last_used: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// Current SVIDs for `entry`, issuing them if needed. Concurrent callers
    /// of one entry wait for a single issuance.
    pub async fn get(&self, entry: &Arc<Entry>) -> Result<Arc<Issued>, Status> {
        entry.touch();
        let mut view = self.trust();
        if !view.state_seen {
            // Just started: wait briefly for the lock state and policy revision,
            // so the first SVIDs are not issued (and replaced) under a stale view.
            let mut rx = self.subscribe_trust();
            let _ = tokio::time::timeout(FIRST_STATE_WAIT, rx.wait_for(|v| v.state_seen)).await;
            view = self.trust();
        }
        if let Some(msg) = &view.locked {
            return Err(Status::permission_denied(msg.clone()));
        }
        if let Some(i) = entry.fresh(&view) {
            return Ok(i);
        }
        let _guard = entry.issuing.lock().await;
        let view = self.trust();
        if let Some(i) = entry.fresh(&view) {
            return Ok(i);
        }
        self.issue(entry, view.policy_revision).await
    }

    /// Ask the auth service and publish the result to the entry's subscribers.
    async fn issue(&self, entry: &Entry, policy_revision: u64) -> Result<Arc<Issued>, Status> {
        let key = match entry.key.kind {
            EntryKind::X509 => Some(
                TlsKeyPair::generate()
                    .map_err(|e| Status::internal(format!("generating a key: {e}")))?,
            ),
            EntryKind::Jwt { .. } => None,
        };
        let (audiences, spiffe_id) = match &entry.key.kind {
            EntryKind::X509 => (Vec::new(), String::new()),
            EntryKind::Jwt {
                audiences,
                spiffe_id,
            } => (audiences.clone(), spiffe_id.clone()),
        };
        let req = IssueWorkloadIdentitiesRequest {
            selector: entry.selector.as_ref().map(selector_to_proto),
            workload_attributes: entry.key.attrs.clone().into_iter().collect(),
            x509_public_key_spki: key.as_ref().map(|k| k.spki_der()).unwrap_or_default(),
            jwt_audiences: audiences,
            spiffe_id,
            ..Default::default()
        };
        let resp = match self.client()?.issue_workload_identities(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                // The server's reason names bots, roles and locks: it goes to
                // the agent's log, the workload hears only that it was refused.
                tracing::warn!(reason = %s.message(), "the auth service refused workload identities");
                let msg = REFUSED_BY_AUTH.to_string();
                entry
                    .state
                    .send_replace(EntryState::Denied(msg.clone(), policy_revision));
                return Err(Status::permission_denied(msg));
            }
            Err(s) => {
                // Keep serving what we have while it is valid: an auth
                // outage must not take workloads down before expiry.
                if let EntryState::Ready(i) = entry.current()
                    && i.expires > OffsetDateTime::now_utc()
                {
                    tracing::warn!(error = %s.message(), "re-issuing SVIDs failed; serving the current ones");
                    return Ok(i);
                }
                return Err(Status::unavailable(format!(
                    "the auth service could not issue SVIDs: {}",
                    s.message()
                )));
            }
        };
        if let Some(b) = &resp.bundle {
            self.apply_bundle(b, false);
        }
        for d in &resp.denials {
            tracing::debug!(identity = %d.name, reason = %d.reason, "workload identity not issued");
        }
        let now = OffsetDateTime::now_utc();
        let key_der = key.map(|k| Arc::new(Zeroizing::new(k.pkcs8_der().to_vec())));
        let x509: Vec<X509Item> = resp
            .x509_svids
            .into_iter()
            .filter_map(|s| {
                Some(X509Item {
                    name: s.name,
                    spiffe_id: s.spiffe_id,
                    hint: s.hint,
                    cert_der: s.cert_der,
                    chain_der: s.chain_der,
                    serial_hex: s.serial_hex,
                    key_pkcs8_der: key_der.clone()?,
                    expires: OffsetDateTime::from_unix_timestamp(s.expires_unix).ok()?,
                    federates_with: s.federates_with,
                })
            })
            .collect();
        let jwt: Vec<JwtItem> = resp
            .jwt_svids
            .into_iter()
            .filter_map(|s| {
                Some(JwtItem {
                    spiffe_id: s.spiffe_id,
                    hint: s.hint,
                    token: Zeroizing::new(s.token),
                    expires: OffsetDateTime::from_unix_timestamp(s.expires_unix).ok()?,
                })
            })
            .collect();
        if x509.is_empty() && jwt.is_empty() {
            let why = if resp.denials.is_empty() {
                "no workload identity granted to this agent matches the selector".to_string()
            } else {
                resp.denials
                    .iter()
                    .map(|d| format!("{}: {}", d.name, d.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            // The reasons quote the identities' rules and the workload's
            // attributes: the agent's log (and the auth service's audit log)
            // get them, the workload does not.
            tracing::info!(
                reasons = %why,
                attributes = ?entry.key.attrs,
                "no workload identity for this workload"
            );
            entry
                .state
                .send_replace(EntryState::Denied(NO_IDENTITY.to_string(), policy_revision));
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let expires = x509
            .iter()
            .map(|x| x.expires)
            .chain(jwt.iter().map(|j| j.expires))
            .min()
            .unwrap_or(now);
        let issued = Arc::new(Issued {
            refresh_at: now + (expires - now) / 2,
            expires,
            x509,
            jwt,
            policy_revision,
        });
        metrics::counter!("sigil_agent_svid_issuances_total").increment(1);
        entry.state.send_replace(EntryState::Ready(issued.clone()));
        Ok(issued)
    }

    /// Change the trust view as the auth service's stream would.
    #[cfg(test)]
    pub(crate) fn update_trust(&self, f: impl FnOnce(&mut TrustView)) {
        self.trust.send_modify(|cur| {
            let mut next = TrustView::clone(cur);
            f(&mut next);
            *cur = Arc::new(next);
        });
    }

    /// `from_stream`: `b` came on the state stream. Federated bundles are taken
    /// from there only: they come complete with every message, in the order the
    /// auth service published them, whereas an issuance's answer may have been
    /// computed before a federation was removed and arrive after the stream
    /// said so (and the stream would not repeat itself).
    pub(crate) fn apply_bundle(&self, b: &TrustBundle, from_stream: bool) {
        let from_message = from_stream.then(|| federated_views(b));
        self.trust.send_if_modified(|cur| {
            let federated = from_message
                .clone()
                .unwrap_or_else(|| cur.federated.clone());
            let own_changed = b.sequence > cur.sequence || cur.authorities.is_empty();
            if !own_changed {
                if cur.federated == federated {
                    return false;
                }
                let mut next = TrustView::clone(cur);
                next.federated = federated.clone();
                *cur = Arc::new(next);
                return true;
            }
            let mut next = TrustView::clone(cur);
            next.federated = federated.clone();
            next.sequence = b.sequence;
            next.authorities = b.x509_authorities.clone();
            next.bundle_der = b.x509_authorities.concat();
            next.jwks = serde_json::from_str(&b.jwt_jwks_json).unwrap_or_default();
            next.jwks_bytes = b.jwt_jwks_json.as_bytes().to_vec();
            // An auth service from before per-CA CRLs sends only crl_der.
            next.crls = if b.crl_ders.is_empty() && !b.crl_der.is_empty() {
                vec![b.crl_der.clone()]
            } else {
                b.crl_ders.clone()
            };
            next.revoked = b.revoked_serials.iter().cloned().collect();
            *cur = Arc::new(next);
            true
        });
    }

    fn apply_state(&self, s: &WorkloadState) {
        if let Some(b) = &s.bundle {
            self.apply_bundle(b, true);
        }
        let locked = s.locked.then(|| {
            if s.lock_message.is_empty() {
                "this agent is locked".to_string()
            } else {
                s.lock_message.clone()
            }
        });
        let ids: BTreeSet<String> = s.locked_spiffe_ids.iter().cloned().collect();
        self.trust.send_if_modified(|cur| {
            if cur.state_seen
                && cur.locked == locked
                && cur.locked_ids == ids
                && cur.policy_revision == s.policy_revision
            {
                return false;
            }
            let mut next = TrustView::clone(cur);
            next.state_seen = true;
            next.locked = locked.clone();
            next.locked_ids = ids.clone();
            next.policy_revision = s.policy_revision;
            *cur = Arc::new(next);
            true
        });
        match locked {
            Some(msg) => {
                tracing::warn!(reason = %msg, "locked: the Workload API stops serving");
                for e in self.all_entries() {
                    e.state
                        .send_replace(EntryState::Denied(msg.clone(), s.policy_revision));
                }
            }
            None => {
                // Unlocked (or never locked): entries refused by a lock start over.
                for e in self.all_entries() {
                    e.state.send_if_modified(|st| {
                        let was_lock =
                            matches!(st, EntryState::Denied(m, _) if m.starts_with("locked"));
                        if was_lock {
                            *st = EntryState::Empty;
                        }
                        was_lock
                    });
                }
            }
        }
    }

    fn all_entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Follow `WatchWorkloadState`, reconnecting with backoff.
    async fn follow_state(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let result = async {
                let mut stream = self
                    .client()?
                    .watch_workload_state(WatchWorkloadStateRequest {})
                    .await?
                    .into_inner();
                while let Some(state) = stream.message().await? {
                    failures = 0;
                    self.apply_state(&state);
                }
                Ok::<(), Status>(())
            }
            .await;
            if let Err(s) = result {
                if s.code() == tonic::Code::PermissionDenied {
                    // Refused outright (locked before we connected).
                    self.apply_state(&WorkloadState {
                        locked: true,
                        lock_message: s.message().to_string(),
                        policy_revision: self.trust().policy_revision,
                        locked_spiffe_ids: self.trust().locked_ids.iter().cloned().collect(),
                        bundle: None,
                    });
                }
                tracing::debug!(error = %s.message(), "workload state stream ended");
            }
            failures = failures.saturating_add(1);
            let wait =
                Duration::from_millis(250u64 << failures.min(7)).min(Duration::from_secs(30));
            tokio::time::sleep(wait).await;
        }
    }

    /// Re-issue subscribed entries at half-life or on a policy change; drop idle ones.
    async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(MAINTAIN_EVERY);
        let mut trust = self.subscribe_trust();
        loop {
            // A policy change, revocation or unlock is acted on at once; the
            // tick covers half-life renewals and idle clean-up.
            tokio::select! {
                _ = tick.tick() => {}
                r = trust.changed() => if r.is_err() { return },
            }
            let view = self.trust();
            if view.locked.is_some() {
                continue;
            }
            let mut idle = Vec::new();
            for e in self.all_entries() {
                let subscribed = e.state.receiver_count() > 0;
                if !subscribed {
                    if e.idle_for() > IDLE_EXPIRY {
                        idle.push(e.key.clone());
                    }
                    continue;
                }
                let due = match e.current() {
                    EntryState::Ready(i) => i.stale(&view),
                    // A denial is reconsidered when policy changes.
                    EntryState::Denied(_, rev) => rev != view.policy_revision,
                    EntryState::Empty => true,
                };
                if !due {
                    continue;
                }
                let Ok(guard) = e.issuing.clone().try_lock_owned() else {
                    continue;
                };
                let rt = self.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let view = rt.trust();
                    if let Err(s) = rt.issue(&e, view.policy_revision).await {
                        tracing::debug!(error = %s.message(), "background SVID re-issue failed");
                    }
                });
            }
            if !idle.is_empty() {
                let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                for k in idle {
                    if map.get(&k).is_some_and(|e| e.state.receiver_count() == 0) {
                        map.remove(&k);
                    }
                }
            }
        }
    }
}

fn selector_to_proto(s: &WorkloadIdentitySelector) -> sigil_proto::v1::WorkloadIdentitySelector {
    sigil_proto::v1::WorkloadIdentitySelector {
        name: s.name.clone().unwrap_or_default(),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), LabelValues { values: v.clone() }))
            .collect(),
    }
}
