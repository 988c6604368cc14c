//! Follows the CAs' rotation state (`WatchCas`). When it changes — a rotation
//! started, moved to another phase or finished — the agent renews at once (after a
//! small random delay, so a fleet does not arrive at the same instant): the renewal
//! brings the new trust bundle and certificates signed by whichever CA signs now,
//! and every output is rewritten from them.

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::v1::WatchCasRequest;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use tokio::sync::{Notify, watch};

use crate::client::AuthChannel;

/// Longest random delay before renewing after a change.
pub fn max_jitter(renewal_interval: Duration) -> Duration {
    (renewal_interval / 10).min(Duration::from_secs(10))
}

/// Runs until the agent stops; `renew_now` is notified on every change, and
/// whenever the client CA signing now is not the one that signed the agent's
/// certificate (`issuer`: its SPKI pin), e.g. when a renewal reached a server
/// a moment before it learnt of the change.
pub async fn follow(
    mut client: watch::Receiver<Option<AuthServiceClient<AuthChannel>>>,
    issuer: watch::Receiver<String>,
    renew_now: Arc<Notify>,
    jitter: Duration,
) {
    // The epoch the agent's credentials were issued under: the first one seen
    // right after the join or renewal that started this task.
    let mut known: Option<String> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(mut c) = client.borrow_and_update().clone() else {
            if client.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut stream = match c.watch_cas(WatchCasRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                failures += 1;
                // An older auth service without the call: nothing to follow.
                if e.code() == tonic::Code::Unimplemented {
                    tracing::info!(
                        "the auth service does not announce CA rotations; renewing on schedule only"
                    );
                    return;
                }
                tracing::debug!(error = %e.message(), "CA rotation stream refused; retrying");
                backoff(failures, &mut client).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(state)) => {
                        failures = 0;
                        let changed = known.as_ref().is_some_and(|k| *k != state.epoch);
                        known = Some(state.epoch.clone());
                        let signer = state
                            .cas
                            .iter()
                            .find(|c| c.purpose == "client")
                            .map(|c| c.signing_fingerprint.as_str())
                            .unwrap_or_default();
                        let stale = {
                            let mine = issuer.borrow();
                            !signer.is_empty() && !mine.is_empty() && *mine != signer
                        };
                        if changed || stale {
                            for ca in state.cas.iter().filter(|c| c.phase != "standby") {
                                tracing::info!(ca = %ca.purpose, phase = %ca.phase, "CA rotation in progress");
                            }
                            // At least a second: a server that has not caught up
                            // yet is not asked again at once.
                            let wait = random_below(jitter).max(Duration::from_secs(1));
                            tracing::info!(renew_in = ?wait, "the auth service's CAs changed; renewing");
                            tokio::time::sleep(wait).await;
                            renew_now.notify_one();
                        }
                    }
                    Ok(None) | Err(_) => {
                        failures += 1;
                        backoff(failures, &mut client).await;
                        break;
                    }
                },
                r = client.changed() => {
                    if r.is_err() { return }
                    // A renewed credential: follow with it.
                    break;
                }
            }
        }
    }
}

/// Waits before reconnecting, or until a new credential arrives.
async fn backoff(
    failures: u32,
    client: &mut watch::Receiver<Option<AuthServiceClient<AuthChannel>>>,
) {
    let wait = Duration::from_millis(250u64 << failures.min(7)).min(Duration::from_secs(30));
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = client.changed() => {}
    }
}

fn random_below(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    if max.is_zero() || aws_lc_rs::rand::fill(&mut b).is_err() {
        return Duration::ZERO;
    }
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from_le_bytes(b) % ms)
}
