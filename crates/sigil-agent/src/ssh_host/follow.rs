//! Follow `WatchSshHost`: rewrite the KRL and `access.json` on every change
//! and end the sessions a lock revoked. Also sweeps once a second, so a
//! login that registered just after a change is not missed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::AuthChannel as Channel;
use sigil_proto::v1::SshHostState;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use tokio::sync::watch;

use super::access::HostAccess;
use super::{sessions, watch_request, write_state};
use crate::destination::Destination;

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Runs until the agent stops.
pub async fn follow(
    dest: Box<dyn Destination>,
    dir: PathBuf,
    labels: BTreeMap<String, String>,
    mut client: watch::Receiver<Option<AuthServiceClient<Channel>>>,
) {
    let dest = dest.as_ref();
    let mut current: Option<HostAccess> = None;
    let mut last_state: Option<SshHostState> = None;
    // A state whose files could not be written yet: retried every sweep.
    let mut unwritten: Option<SshHostState> = None;
    let mut failures: u32 = 0;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let Some(mut c) = client.borrow_and_update().clone() else {
            if client.changed().await.is_err() {
                return;
            }
            continue;
        };
        let stream = c.watch_ssh_host(watch_request(&labels)).await;
        let mut stream = match stream {
            Ok(s) => {
                failures = 0;
                s.into_inner()
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e.message(), "SSH access stream refused; retrying");
                pause(failures, &mut sweep, &dir, current.as_ref()).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(state)) => {
                        if last_state.as_ref() != Some(&state) {
                            // Open sessions follow the new decisions even if
                            // the files cannot be written; the write is
                            // retried with the next state (not marked done).
                            current = Some(HostAccess::from_state(&state));
                            match write_state(dest, &state) {
                                Ok(_) => {
                                    last_state = Some(state);
                                    unwritten = None;
                                }
                                Err(e) => {
                                    tracing::error!(error = %format!("{e:#}"),
                                        "writing the KRL and access file failed; retrying every second");
                                    unwritten = Some(state);
                                }
                            }
                        }
                        end_revoked(&dir, current.as_ref());
                    }
                    Ok(None) | Err(_) => {
                        failures += 1;
                        tracing::warn!("SSH access stream ended; reconnecting");
                        pause(failures, &mut sweep, &dir, current.as_ref()).await;
                        break;
                    }
                },
                _ = sweep.tick() => {
                    if let Some(s) = unwritten.take() {
                        match write_state(dest, &s) {
                            Ok(_) => last_state = Some(s),
                            Err(_) => unwritten = Some(s),
                        }
                    }
                    end_revoked(&dir, current.as_ref());
                }
                r = client.changed() => {
                    if r.is_err() { return }
                    // A renewed credential: reconnect with it.
                    break;
                }
            }
        }
    }
}

/// Back off before reconnecting, still sweeping sessions meanwhile.
async fn pause(
    failures: u32,
    sweep: &mut tokio::time::Interval,
    dir: &std::path::Path,
    access: Option<&HostAccess>,
) {
    let wait = Duration::from_millis(250u64 << failures.min(7)).min(Duration::from_secs(30));
    let until = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return,
            _ = sweep.tick() => end_revoked(dir, access),
        }
    }
}

fn end_revoked(dir: &std::path::Path, access: Option<&HostAccess>) {
    let Some(access) = access else { return };
    match sessions::sweep(dir, access) {
        Ok(ended) => {
            for e in ended {
                metrics::counter!("sigil_agent_ssh_sessions_ended_total").increment(1);
                tracing::warn!(pid = e.record.pid, user = %e.record.user, key_id = %e.record.key_id,
                    serial = e.record.serial, reason = %e.reason, "ended an SSH session: its certificate is no longer allowed");
            }
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "checking open SSH sessions failed"),
    }
}
