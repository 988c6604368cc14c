//! SPIFFE federation (SPIFFE Federation standard): for each
//! `spiffe_federation` resource, fetch the foreign trust domain's bundle from
//! its bundle endpoint, refresh it at the endpoint's `spiffe_refresh_hint`
//! (bounded), keep the last good bundle whatever goes wrong, and store the
//! current one under [`keys::FEDERATED_BUNDLES`] so every server (and every
//! restart) serves the same. The bundles reach agents through
//! [`crate::trust::Trust::set_federated`] (the `WatchWorkloadState` stream).
//!
//! Every server of an HA cluster fetches on its own; a change is written by
//! whichever server sees it first (the others then see the same keys and do
//! not write). A federation's deletion deletes its stored bundle.

mod endpoint;
mod fetch;
pub mod spiffe_tls;

pub use endpoint::serve_bundle_endpoint;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sigil_pki::ForeignBundle;
use sigil_proto::v1::FederatedBundle;
use sigil_store::{Item, Op, StoreError, Txn, WatchEvent};
use sigil_types::{Kind, SpiffeFederation, SpiffeFederationSpec};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use crate::audit;
use crate::keys;
use crate::state::SharedState;

/// Audit event: a federated domain's bundle changed (first bundle included).
pub const BUNDLE_UPDATED: &str = "spiffe_federation.bundle_updated";
/// Audit event: fetching a federated bundle failed (at most once per
/// [`FAILURE_AUDIT_EVERY`] per domain); the last good bundle stays.
pub const REFRESH_FAILED: &str = "spiffe_federation.refresh_failed";

/// Refresh no more often than this, whatever the hint says.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Refresh at least this often, whatever the hint says.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// When the endpoint gives no hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// First retry after a failure; doubles up to the refresh interval.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// A failing domain is audited at most this often.
pub const FAILURE_AUDIT_EVERY: Duration = Duration::from_secs(600);

/// The admin API's check of a `spiffe_federation` beyond its own validation:
/// the bootstrap bundle must parse as a bundle of that domain.
pub fn check_resource(f: &SpiffeFederation) -> Result<(), Status> {
    if let Some(text) = &f.spec.trust_bundle {
        sigil_pki::parse_trust_bundle(text, &f.metadata.name).map_err(|e| {
            Status::invalid_argument(format!(
                "spiffe_federation {:?}: spec.trust_bundle: {e}",
                f.metadata.name
            ))
        })?;
    }
    Ok(())
}

/// A bundle as stored under [`keys::FEDERATED_BUNDLES`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct StoredBundle {
    trust_domain: String,
    /// Base64 DER CA certificates.
    x509_authorities: Vec<String>,
    jwt_keys: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_hint_seconds: Option<u64>,
    /// `trust_bundle` (the resource's bootstrap) or the endpoint URL.
    source: String,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl StoredBundle {
    fn new(td: &str, b: &ForeignBundle, source: &str) -> Self {
        StoredBundle {
            trust_domain: td.to_string(),
            x509_authorities: b.x509_authorities.iter().map(|d| B64.encode(d)).collect(),
            jwt_keys: b.jwt_keys.clone(),
            sequence: b.sequence,
            refresh_hint_seconds: b.refresh_hint.map(|h| h.as_secs()),
            source: source.to_string(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    fn bundle(&self) -> Option<ForeignBundle> {
        Some(ForeignBundle {
            x509_authorities: self
                .x509_authorities
                .iter()
                .map(|s| B64.decode(s).ok())
                .collect::<Option<Vec<_>>>()?,
            jwt_keys: self.jwt_keys.clone(),
            sequence: self.sequence,
            refresh_hint: self.refresh_hint_seconds.map(Duration::from_secs),
        })
    }
}

/// One federation being followed.
struct Followed {
    res: SpiffeFederation,
    next: Instant,
    failures: u32,
    in_flight: bool,
    last_failure_audit: Option<Instant>,
}

/// The refresh interval a bundle asks for, bounded.
pub fn refresh_interval(hint: Option<Duration>) -> Duration {
    hint.unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Follow federations and their bundles until the process ends.
pub async fn run(state: SharedState) {
    loop {
        if let Err(e) = follow(&state).await {
            tracing::warn!(error = %format!("{e:#}"), "SPIFFE federation: restarting after an error");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Fetched {
    trust_domain: String,
    spec: SpiffeFederationSpec,
    result: Result<ForeignBundle, String>,
}

async fn follow(state: &SharedState) -> anyhow::Result<()> {
    // Subscribe before listing: no change between the two is lost.
    let mut rx = state.store.watch();
    let mut feds: BTreeMap<String, Followed> = BTreeMap::new();
    let mut bundles: BTreeMap<String, ForeignBundle> = BTreeMap::new();
    for item in state.store.list(keys::SPIFFE_FEDERATIONS).await? {
        if let Some(f) = decode_federation(&item) {
            feds.insert(f.metadata.name.clone(), followed(f));
        }
    }
    for item in state.store.list(keys::FEDERATED_BUNDLES).await? {
        if let Some((td, b)) = decode_bundle(&item) {
            bundles.insert(td, b);
        }
    }
    for f in feds.values() {
        bootstrap(state, &f.res, &mut bundles).await;
    }
    publish(state, &feds, &bundles);
    let (tx, mut results) = mpsc::channel::<Fetched>(16);
    loop {
        let next = feds
            .values()
            .filter(|f| !f.in_flight)
            .map(|f| f.next)
            .min()
            .unwrap_or_else(|| Instant::now() + MAX_REFRESH);
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(WatchEvent::Put(item)) => {
                    if item.key.starts_with(keys::SPIFFE_FEDERATIONS) {
                        let Some(f) = decode_federation(&item) else { continue };
                        let td = f.metadata.name.clone();
                        let changed = feds.get(&td).is_none_or(|cur| cur.res.spec != f.spec);
                        if changed {
                            bootstrap(state, &f, &mut bundles).await;
                            feds.insert(td, followed(f));
                        }
                    } else if item.key.starts_with(keys::FEDERATED_BUNDLES) {
                        let Some((td, b)) = decode_bundle(&item) else { continue };
                        bundles.insert(td, b);
                    } else {
                        continue;
                    }
                    publish(state, &feds, &bundles);
                }
                Ok(WatchEvent::Delete { key, .. }) => {
                    if let Some(td) = key.strip_prefix(keys::SPIFFE_FEDERATIONS) {
                        feds.remove(td);
                        // Forgotten at once: a federation created again before the
                        // record's deletion comes back starts from its own bootstrap.
                        bundles.remove(td);
                        forget_bundle(state, td).await;
                    } else if let Some(td) = key.strip_prefix(keys::FEDERATED_BUNDLES) {
                        bundles.remove(td);
                    } else {
                        continue;
                    }
                    publish(state, &feds, &bundles);
                }
                Ok(WatchEvent::Reset) | Err(RecvError::Lagged(_)) => {
                    anyhow::bail!("the store's change feed lost continuity; reloading federations");
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            _ = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                for (td, f) in feds.iter_mut().filter(|(_, f)| !f.in_flight && f.next <= now) {
                    f.in_flight = true;
                    let (state, tx, res, last) =
                        (state.clone(), tx.clone(), f.res.clone(), bundles.get(td).cloned());
                    tokio::spawn(async move {
                        let result = fetch::fetch(&state.outbound, &res, last.as_ref()).await;
                        let _ = tx
                            .send(Fetched { trust_domain: res.metadata.name, spec: res.spec, result })
                            .await;
                    });
                }
            },
            Some(done) = results.recv() => {
                let Some(f) = feds.get_mut(&done.trust_domain) else { continue };
                f.in_flight = false;
                if f.res.spec != done.spec {
                    // Changed while fetching: fetch again under the new spec.
                    f.next = Instant::now();
                    continue;
                }
                match done.result {
                    Ok(b) => {
                        f.failures = 0;
                        f.next = Instant::now() + refresh_interval(b.refresh_hint);
                        let td = done.trust_domain;
                        if bundles.get(&td).is_some_and(|cur| cur.same_keys(&b)) {
                            continue;
                        }
                        let url = match f.res.spec.profile() {
                            Some(sigil_types::BundleProfile::Web { url })
                            | Some(sigil_types::BundleProfile::Spiffe { url, .. }) => url.to_string(),
                            None => String::new(),
                        };
                        if let Err(e) = store_bundle(state, &td, &b, &url).await {
                            tracing::warn!(trust_domain = %td, error = %e, "storing a federated bundle failed");
                            f.next = Instant::now() + RETRY_FIRST;
                            continue;
                        }
                        bundles.insert(td, b);
                        publish(state, &feds, &bundles);
                    }
                    Err(why) => {
                        f.failures = f.failures.saturating_add(1);
                        let interval = refresh_interval(
                            bundles.get(&done.trust_domain).and_then(|b| b.refresh_hint),
                        );
                        let retry = (RETRY_FIRST * 2u32.saturating_pow(f.failures.min(10) - 1)).min(interval);
                        f.next = Instant::now() + retry;
                        tracing::warn!(trust_domain = %done.trust_domain, error = %why,
                            "fetching a federated SPIFFE bundle failed; keeping the last good bundle");
                        let due = f
                            .last_failure_audit
                            .is_none_or(|t| t.elapsed() >= FAILURE_AUDIT_EVERY);
                        if due {
                            f.last_failure_audit = Some(Instant::now());
                            let ev = audit::event(REFRESH_FAILED, serde_json::json!({
                                "trust_domain": done.trust_domain, "error": why,
                                "kept_bundle": bundles.contains_key(&done.trust_domain),
                            }));
                            if let Err(e) = state.store.commit(Txn { ops: vec![], audit: vec![ev] }).await {
                                tracing::warn!(error = %e, "auditing a federation failure failed");
                            }
                        }
                    }
                }
            },
        }
    }
}

fn followed(res: SpiffeFederation) -> Followed {
    Followed {
        res,
        next: Instant::now(),
        failures: 0,
        in_flight: false,
        last_failure_audit: None,
    }
}

fn decode_federation(item: &Item) -> Option<SpiffeFederation> {
    let f: SpiffeFederation = serde_json::from_slice(&item.value)
        .map_err(|e| tracing::error!(key = %item.key, error = %e, "undecodable spiffe_federation"))
        .ok()?;
    SpiffeFederationSpec::validate(&f)
        .map_err(|e| tracing::error!(key = %item.key, error = %e, "invalid spiffe_federation"))
        .ok()?;
    Some(f)
}

fn decode_bundle(item: &Item) -> Option<(String, ForeignBundle)> {
    let s: StoredBundle = serde_json::from_slice(&item.value).ok()?;
    let td = item.key.strip_prefix(keys::FEDERATED_BUNDLES)?;
    if s.trust_domain != td {
        return None;
    }
    Some((td.to_string(), s.bundle()?))
}

/// With no stored bundle, the resource's `trust_bundle` becomes the first one.
async fn bootstrap(
    state: &SharedState,
    f: &SpiffeFederation,
    bundles: &mut BTreeMap<String, ForeignBundle>,
) {
    let td = &f.metadata.name;
    if bundles.contains_key(td) {
        return;
    }
    let Some(text) = &f.spec.trust_bundle else {
        return;
    };
    match sigil_pki::parse_trust_bundle(text, td) {
        Ok(b) => {
            if let Err(e) = store_bundle(state, td, &b, "trust_bundle").await {
                tracing::warn!(trust_domain = %td, error = %e, "storing the bootstrap bundle failed");
            }
            bundles.insert(td.clone(), b);
        }
        Err(e) => {
            tracing::error!(trust_domain = %td, error = %e, "spec.trust_bundle is not a usable bundle")
        }
    }
}

async fn store_bundle(
    state: &SharedState,
    td: &str,
    b: &ForeignBundle,
    source: &str,
) -> Result<(), StoreError> {
    let rec = StoredBundle::new(td, b, source);
    let value = serde_json::to_vec(&rec).unwrap_or_default();
    let ev = audit::event(
        BUNDLE_UPDATED,
        serde_json::json!({
            "trust_domain": td, "source": source, "sequence": b.sequence,
            "x509_authorities": b.x509_authorities.len(), "jwt_keys": b.jwt_keys.len(),
        }),
    );
    state
        .store
        .commit(Txn {
            ops: vec![Op::Put {
                key: keys::federated_bundle(td),
                value,
                expires: None,
            }],
            audit: vec![ev],
        })
        .await
        .map(|_| ())
}

async fn forget_bundle(state: &SharedState, td: &str) {
    let op = Op::Delete {
        key: keys::federated_bundle(td),
        expected_revision: None,
    };
    match state
        .store
        .commit(Txn {
            ops: vec![op],
            audit: vec![],
        })
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) => {}
        Err(e) => {
            tracing::warn!(trust_domain = %td, error = %e, "deleting a federated bundle failed")
        }
    }
}

/// Serve the bundles of the federations that exist (a stored bundle whose
/// federation is gone is never served).
fn publish(
    state: &SharedState,
    feds: &BTreeMap<String, Followed>,
    bundles: &BTreeMap<String, ForeignBundle>,
) {
    let served = feds
        .keys()
        .filter_map(|td| {
            let b = bundles.get(td)?;
            Some((
                td.clone(),
                FederatedBundle {
                    x509_authorities: b.x509_authorities.clone(),
                    jwt_jwks_json: b.jwks_json(),
                },
            ))
        })
        .collect();
    if state.trust.set_federated(served) {
        tracing::info!(
            domains = ?state.trust.federated().keys().collect::<Vec<_>>(),
            "federated SPIFFE bundles changed"
        );
    }
}

/// Our own SPIFFE bundle document, with the trust domain named (Sigil's
/// extension member, so a peer can tell a bundle of the wrong domain).
pub fn own_bundle_document(state: &SharedState) -> String {
    let json = state.trust.current().spiffe_bundle_json.clone();
    match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert(
                sigil_pki::federated_bundle::TRUST_DOMAIN_MEMBER.into(),
                state.cluster.clone().into(),
            );
            serde_json::Value::Object(m).to_string()
        }
        _ => json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_is_bounded() {
        assert_eq!(refresh_interval(None), DEFAULT_REFRESH);
        assert_eq!(refresh_interval(Some(Duration::ZERO)), MIN_REFRESH);
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(86400 * 30))),
            MAX_REFRESH
        );
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn stored_bundle_round_trips() {
        let b = ForeignBundle {
            x509_authorities: vec![vec![0x30, 1, 2]],
            jwt_keys: vec![serde_json::json!({"kid": "k", "kty": "EC"})],
            sequence: Some(3),
            refresh_hint: Some(Duration::from_secs(9)),
        };
        let s = StoredBundle::new("b.test", &b, "trust_bundle");
        let item = Item {
            key: keys::federated_bundle("b.test"),
            value: serde_json::to_vec(&s).unwrap(),
            revision: 1,
            expires: None,
        };
        assert_eq!(decode_bundle(&item), Some(("b.test".to_string(), b)));
        // A record under another domain's key is not trusted for this one.
        let moved = Item {
            key: keys::federated_bundle("c.test"),
            ..item
        };
        assert_eq!(decode_bundle(&moved), None);
    }
}
