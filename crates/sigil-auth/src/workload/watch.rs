//! `WatchWorkloadState`: pushes an agent the trust bundle, CRL, locks and
//! policy revision at once and again on every change, so a lock stops the
//! agent's Workload API within a second and a revocation reaches workloads.

use std::time::Duration;

use sigil_pki::ClientIdentity;
use sigil_proto::v1::WorkloadState;
use sigil_types::LockTarget;
use tokio::sync::mpsc;
use tonic::Status;

use crate::authz;
use crate::issuance::bot_authority;
use crate::state::SharedState;

/// Recompute at least this often (a lock with a TTL ends on its own).
const RECHECK_EVERY: Duration = Duration::from_secs(15);
/// How often to check that this server's view of locks is current.
const VIEW_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Stream states to `tx` until the agent goes away or is locked.
pub async fn run(
    state: SharedState,
    id: ClientIdentity,
    tx: mpsc::Sender<Result<WorkloadState, Status>>,
) {
    let mut policy = state.cache.subscribe();
    let mut trust = state.trust.subscribe();
    let mut last: Option<WorkloadState> = None;
    let mut view_check = tokio::time::interval(VIEW_CHECK_EVERY);
    loop {
        if let Err(stale) = state.view_current() {
            // End the stream: the agent reconnects, to another server if this one
            // stays stale, rather than trust a view that may miss a lock.
            let _ = tx.send(Err(stale)).await;
            return;
        }
        let current = compute(&state, &id, policy.borrow_and_update().policy);
        trust.borrow_and_update();
        if last.as_ref() != Some(&current) {
            if tx.send(Ok(current.clone())).await.is_err() {
                return;
            }
            if current.locked {
                // The final word: the agent stops serving; the stream ends.
                return;
            }
            last = Some(current);
        }
        tokio::select! {
            r = policy.changed() => if r.is_err() { return },
            r = trust.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
            _ = view_check.tick() => {}
            _ = tx.closed() => return,
        }
    }
}

/// The state for one agent right now.
fn compute(state: &SharedState, id: &ClientIdentity, policy_revision: u64) -> WorkloadState {
    let (locked, lock_message) = match bot_authority(state, &id.bot, &id.bot_uid) {
        Err(e) => (true, e),
        Ok(auth) => {
            // The bot's current roles, not only those in its certificate.
            let mut targets = authz::lock_targets(id);
            targets.extend(auth.roles.into_iter().map(LockTarget::Role));
            match state.cache.lock_for(&targets) {
                Some(l) => (true, authz::locked(&l).message().to_string()),
                None => (false, String::new()),
            }
        }
    };
    let mut locked_spiffe_ids: Vec<String> = state
        .cache
        .locks()
        .into_iter()
        .filter_map(|l| match l.spec.target {
            LockTarget::SpiffeId(s) => Some(s),
            _ => None,
        })
        .collect();
    locked_spiffe_ids.sort();
    WorkloadState {
        bundle: Some(state.trust.bundle_proto(&state.cluster)),
        locked,
        lock_message,
        locked_spiffe_ids,
        policy_revision,
    }
}
