//! `WatchAppAccess`: the proxy's apps and client CAs, pushed at once and on
//! every change of the cache (policy, locks, revocations) or of the CAs.

use std::time::Duration;

use sigil_pki::ClientIdentity;
use sigil_proto::v1::AppAccessState;
use tokio::sync::mpsc;
use tonic::Status;

use crate::state::{AuthState, SharedState};

/// Re-send at least this often (a lock with a TTL ends on its own).
const RESEND_EVERY: Duration = Duration::from_secs(15);

/// The state for `proxy` right now.
pub fn state_for(
    state: &AuthState,
    proxy: &ClientIdentity,
    generation: u64,
) -> Result<AppAccessState, Status> {
    let apps = super::served_apps(state, proxy)?;
    let apps_json = apps
        .iter()
        .map(|a| serde_json::to_string(a).map_err(|e| Status::internal(format!("app JSON: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    // Identity certificates and X.509-SVIDs are both accepted at the handshake.
    let cas = state.cas();
    let client_ca_pem = cas
        .client
        .trusted
        .iter()
        .chain(&cas.spiffe.trusted)
        .map(|c| c.cert_pem())
        .collect::<String>();
    Ok(AppAccessState {
        generation,
        apps_json,
        client_ca_pem,
    })
}

/// Stream states to `tx` until the proxy goes away or may serve nothing.
pub async fn watch(
    state: SharedState,
    proxy: ClientIdentity,
    tx: mpsc::Sender<Result<AppAccessState, Status>>,
) {
    let mut changes = state.cache.subscribe();
    let mut epochs = state.ca_epoch.subscribe();
    let mut generation: u64 = 0;
    loop {
        changes.borrow_and_update();
        epochs.borrow_and_update();
        generation += 1;
        let next = state_for(&state, &proxy, generation);
        let stop = next.is_err();
        if tx.send(next).await.is_err() || stop {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = epochs.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RESEND_EVERY) => {}
            _ = tx.closed() => return,
        }
    }
}
