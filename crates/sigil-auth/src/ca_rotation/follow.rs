//! Keeping a server's CAs current: on every change of a CA or rotation record in
//! the store (its own or another server's), reload them and swap in everything
//! derived from them — the trust bundle and JWKS, the client CAs the TLS listener
//! accepts, its own server certificate — then tell agents (`WatchCas`) and the
//! workload and SSH streams (the cache's policy revision), which re-issue.

use std::sync::Arc;
use std::time::Duration;

use sigil_store::WatchEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::{self, Cas};
use crate::keys;
use crate::state::{AuthState, SharedState};
use crate::tls::ClientRoots;

/// Reads the CAs from the store and, if anything changed, publishes them.
pub async fn reload(state: &AuthState) -> anyhow::Result<()> {
    // One reload at a time: the later read of the store always wins.
    let _one = state.cas_reload.lock().await;
    let cas = cluster::load(state.store.as_ref(), state.ca_km.as_ref()).await?;
    let before = state.cas();
    if cas.epoch == before.epoch {
        return Ok(());
    }
    let cas = Arc::new(cas);
    // Everything that can fail first, so a failure installs nothing (this server
    // keeps serving the CA set it has, and the step is retried).
    let server = (cas.host.server.spki_pin() != before.host.server.spki_pin())
        .then(|| state.server_cert.prepare(&cas.host.server))
        .transpose()?;
    let verifier = ClientRoots::prepare(&cas.client.trusted)?;
    state
        .trust
        .rebuild(&cas, &state.cache.revocations())
        .map_err(|e| anyhow::anyhow!("rebuilding the trust bundle: {e:#}"))?;
    state.client_roots.install(verifier);
    if let Some(ck) = server {
        state.server_cert.install(ck);
        tracing::info!(ca_pin = %cas.server_pin(), "auth service TLS certificate re-issued by the host CA now serving");
    }
    state.set_cas(cas.clone());
    // Workload and SSH streams re-send their state and agents re-issue.
    state.cache.bump_policy();
    state.ca_epoch.send_replace(cas.epoch.clone());
    for r in &cas.rotations {
        tracing::info!(ca = %r.purpose, phase = %r.phase, rotation = %r.id, "CA rotation in progress");
    }
    Ok(())
}

/// Whether a server could serve `cas`: its TLS certificate, client verifier and
/// trust bundle can all be made. Checked before a step is committed.
pub fn check(state: &AuthState, cas: &Cas) -> anyhow::Result<()> {
    state
        .server_cert
        .prepare(&cas.host.server)
        .map_err(|e| anyhow::anyhow!("the auth service's TLS certificate: {e:#}"))?;
    ClientRoots::prepare(&cas.client.trusted)?;
    crate::trust::check(cas).map_err(|e| anyhow::anyhow!("the trust bundle: {e:#}"))
}

/// Follows the store's change feed for CA records; also drives automatic rotations.
pub async fn follow(state: SharedState) {
    let mut rx = state.store.watch();
    // Anything committed before the subscription is picked up here.
    reload_logged(&state).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failures = super::AutoFailures::default();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let relevant = match ev {
                    Ok(WatchEvent::Put(item)) => is_ca_key(&item.key),
                    Ok(WatchEvent::Delete { key, .. }) => is_ca_key(&key),
                    Ok(WatchEvent::Reset) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                };
                if relevant {
                    reload_logged(&state).await;
                }
            }
            _ = tick.tick() => super::auto_advance(&state, &mut failures).await,
        }
    }
}

fn is_ca_key(key: &str) -> bool {
    key.starts_with(keys::CAS) || key.starts_with(keys::CA_ROTATIONS)
}

/// Reloads until it succeeds: a server serving an old CA set would issue from a key
/// that may no longer be trusted, so until then it is unready and issues nothing
/// (`AuthState::view_current`); agents move to another server.
async fn reload_logged(state: &AuthState) {
    let mut wait = Duration::from_millis(100);
    while let Err(e) = reload(state).await {
        let why = format!("{e:#}");
        tracing::error!(error = %why, "reloading the CAs failed; unready until a retry succeeds");
        state.set_cas_stale(Some(why));
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
    if state.cas_stale().is_some() {
        tracing::info!("the CAs reloaded; ready again");
        state.set_cas_stale(None);
    }
}
