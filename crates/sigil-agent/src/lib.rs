//! The Sigil agent: joins, keeps its own identity renewed (with a crash-safe
//! generation counter), and writes credentials that ordinary tools use.

/// Abort at a named fault point (fault.rs) when built with the
/// `fault-injection` feature; expands to nothing otherwise.
macro_rules! fault_point {
    ($p:ident) => {
        #[cfg(feature = "fault-injection")]
        $crate::fault::hit($crate::fault::Point::$p);
    };
}

mod agent;
mod app_tunnel;
mod ca_watch;
pub mod client;
mod config;
mod destination;
mod diag;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fsutil;
mod identity_file;
mod join;
mod output;
mod spiffe;
pub mod ssh_host;
mod storage;
mod telemetry;
mod witness;
pub mod workload;

use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};

use agent::{Agent, issuer_pin};
pub use config::{AgentConfig, AgentFlags, OUTPUT_TYPES};
pub use error::{JoinDeniedError, StatusError, status_error};
pub use identity_file::IdentityFile;
use storage::Storage;
use witness::Witness;

/// Run the agent. With `oneshot`, obtain credentials once and return.
pub async fn run(cfg: AgentConfig, oneshot: bool) -> anyhow::Result<()> {
    run_with(cfg, oneshot, None).await
}

/// The agent's current client to the auth service (its renewed identity).
pub type SharedClient = tokio::sync::watch::Sender<Option<AuthServiceClient<client::AuthChannel>>>;

/// [`run`], also publishing the agent's current client to `share` on every
/// renewal: `sigil proxy` calls the auth service as the agent it runs.
pub async fn run_with(
    cfg: AgentConfig,
    oneshot: bool,
    share: Option<SharedClient>,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Everything local is checked before the first network call.
    fsutil::check_writable(&cfg.storage, "storage")?;
    let outputs = cfg
        .outputs
        .iter()
        .filter(|o| {
            matches!(
                o.kind.as_str(),
                "identity" | "ssh-host" | "kubernetes" | "database" | "database-server"
            )
        })
        .map(output::from_config)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for o in &outputs {
        o.destination().check_writable()?;
    }
    let mut svid_outputs = Vec::new();
    for o in &cfg.outputs {
        if let Some(s) = spiffe::outputs::SvidOutput::from_config(o)? {
            s.destination().check_writable()?;
            svid_outputs.push(std::sync::Arc::new(s));
        }
    }
    // Bind the Workload API sockets now: a bad path fails before any join.
    let mut sockets = Vec::new();
    let mut tunnels = Vec::new();
    if !oneshot {
        for (i, s) in cfg.services.iter().enumerate() {
            if s.kind == config::app_tunnel::KIND {
                let t = config::app_tunnel::validate(i, s)?;
                let listener = tokio::net::TcpListener::bind(t.listen)
                    .await
                    .with_context(|| format!("services[{i}].listen: binding {}", t.listen))?;
                tunnels.push((listener, t));
                continue;
            }
            let path = s.socket_path()?;
            let listener = spiffe::server::bind(&path)?;
            sockets.push((s.clone(), path, listener));
        }
    } else if !cfg.services.is_empty() {
        tracing::warn!("--oneshot: services are not started");
    }
    if !sockets.is_empty() {
        raise_fd_limit();
    }
    // ssh-host outputs follow the host's SSH access state between renewals.
    let mut ssh_hosts: Vec<_> = cfg
        .outputs
        .iter()
        .filter(|o| o.kind == "ssh-host")
        .map(|o| {
            Ok((
                destination::from_config(&o.destination)?,
                o.destination.path.clone(),
                o.labels.clone(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    // database-server outputs follow their CRL between renewals.
    let mut db_servers: Vec<_> = cfg
        .outputs
        .iter()
        .filter(|o| o.kind == "database-server")
        .map(|o| {
            Ok((
                destination::from_config(&o.destination)?,
                o.service.clone().unwrap_or_default(),
                o.reload_command.clone(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ssh_tasks = Vec::new();
    let (client_tx, client_rx) = tokio::sync::watch::channel(None);
    let _share_task = share.map(|share| {
        let mut rx = client_rx.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                share.send_replace(rx.borrow_and_update().clone());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }))
    });
    // The SPKI pin of the CA that signed the agent's certificate (ca_watch.rs).
    let (issuer_tx, issuer_rx) = tokio::sync::watch::channel(String::new());
    let renew_now = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut ca_task = None;
    let mut workload: Option<WorkloadTasks> = None;
    let storage = Storage::new(&cfg.storage);
    if storage.load()?.is_none_or(|c| !c.renewable) {
        join::prover(&cfg.onboarding)?;
    }
    let ready = diag::Readiness::default();
    if let Some(addr) = &cfg.diag_addr {
        let bound = diag::start(addr, ready.clone()).await?;
        tracing::info!(addr = %bound, "diagnostics listening");
    }
    let agent = Agent {
        witness: Witness::new(&cfg.storage),
        servers: client::Servers::new(cfg.auth_servers.clone())?,
        cfg,
        storage,
        outputs,
        started: std::time::Instant::now(),
        oneshot,
        join_key: std::sync::Mutex::new(None),
    };

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut failures: u32 = 0;
    loop {
        // One-shot runs need the client for SVID outputs only; a
        // long-running agent always follows CA rotations with it.
        let switch_client = |cred: &storage::StoredCredential| -> anyhow::Result<()> {
            if !oneshot || !svid_outputs.is_empty() {
                client_tx.send_replace(Some(agent.client(cred)?));
                issuer_tx.send_replace(issuer_pin(&cred.cert_pem));
            }
            Ok(())
        };
        let started = std::time::Instant::now();
        let cycled = agent.cycle(switch_client).await;
        telemetry::renewal_observed(started, &cycled);
        let wait = match cycled {
            Ok(cred) => {
                failures = 0;
                ready.succeeded(cred.expires);
                metrics::counter!("sigil_agent_renewals_total", "result" => "ok").increment(1);
                tracing::info!(bot = %cred.bot, instance = %cred.instance_id, generation = cred.generation,
                    expires = %rfc3339(cred.expires), "credentials written");
                // Once started, the workload tasks hold no outputs or sockets
                // here: without `workload.is_some()` they kept the first
                // credential, which the server refuses once renewed twice.
                if oneshot {
                    if !svid_outputs.is_empty() {
                        let rt = spiffe::Runtime::new(cred.cluster.clone(), client_rx.clone());
                        for o in &svid_outputs {
                            o.write_once(&rt).await?;
                        }
                    }
                    return Ok(());
                }
                if ca_task.is_none() {
                    ca_task = Some(AbortOnDrop(tokio::spawn(ca_watch::follow(
                        client_rx.clone(),
                        issuer_rx.clone(),
                        renew_now.clone(),
                        ca_watch::max_jitter(agent.cfg.renewal_interval),
                    ))));
                }
                for (listener, t) in std::mem::take(&mut tunnels) {
                    tracing::info!(app = %t.app, listen = %t.listen, "application tunnel listening");
                    let t = std::sync::Arc::new(t);
                    let (cert_tx, cert_rx) = tokio::sync::watch::channel(None);
                    ssh_tasks.push(AbortOnDrop(tokio::spawn(app_tunnel::follow_certificate(
                        t.clone(),
                        agent.cfg.credential_ttl,
                        client_rx.clone(),
                        cert_tx,
                    ))));
                    ssh_tasks.push(AbortOnDrop(tokio::spawn(app_tunnel::serve(
                        listener, t, cert_rx,
                    ))));
                }
                for (dest, service, reload) in std::mem::take(&mut db_servers) {
                    ssh_tasks.push(AbortOnDrop(tokio::spawn(output::database_server::follow(
                        dest,
                        service,
                        reload,
                        client_rx.clone(),
                    ))));
                }
                for (dest, dir, labels) in std::mem::take(&mut ssh_hosts) {
                    ssh_tasks.push(AbortOnDrop(tokio::spawn(ssh_host::follow(
                        dest,
                        dir,
                        labels,
                        client_rx.clone(),
                    ))));
                }
                if workload.is_none() && (!svid_outputs.is_empty() || !sockets.is_empty()) {
                    workload = Some(WorkloadTasks::start(
                        &cred.cluster,
                        client_rx.clone(),
                        std::mem::take(&mut svid_outputs),
                        std::mem::take(&mut sockets),
                    ));
                }
                next_renewal(agent.cfg.renewal_interval, cred.expires)
            }
            Err(e) => {
                metrics::counter!("sigil_agent_renewals_total", "result" => "error").increment(1);
                if oneshot || e.downcast_ref::<JoinDeniedError>().is_some() {
                    return Err(e);
                }
                failures += 1;
                ready.failed(format!("{e:#}"));
                let b = backoff(failures, agent.cfg.renewal_interval);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?b, "renewal failed; keeping the current credentials");
                b
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = hup.recv() => tracing::info!("SIGHUP: renewing now"),
            _ = renew_now.notified() => tracing::info!("CA rotation: renewing now"),
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The agent keeps many small buffers per connected workload for as long as
/// it is connected. The allocator asks for transparent huge pages, and then
/// every touched 2 MiB region is resident whole: measured with 1,000
/// workloads, 75.7 MB with them and 51.4 MB without (benches/README.md).
/// `PR_SET_THP_DISABLE` applies to this process's later page faults only:
/// call it first thing, before the async runtime starts.
pub fn disable_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments changes no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}

/// Each connected workload holds two descriptors (its socket and a pidfd):
/// lift the soft limit to the hard one so a default 1,024 does not cap the
/// Workload API near 500 workloads.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(limit = lim.rlim_cur, "could not raise the open-file limit");
            }
        }
    }
}

/// The workload identity side, started after the first successful join.
struct WorkloadTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WorkloadTasks {
    fn start(
        trust_domain: &str,
        client: tokio::sync::watch::Receiver<Option<AuthServiceClient<client::AuthChannel>>>,
        outputs: Vec<std::sync::Arc<spiffe::outputs::SvidOutput>>,
        sockets: Vec<(
            config::ServiceConfig,
            std::path::PathBuf,
            tokio::net::UnixListener,
        )>,
    ) -> WorkloadTasks {
        let rt = spiffe::Runtime::new(trust_domain.to_string(), client);
        let mut tasks = rt.start();
        for o in outputs {
            tasks.push(tokio::spawn(o.run(rt.clone())));
        }
        for (svc, path, listener) in sockets {
            let api = spiffe::api::WorkloadApi {
                rt: rt.clone(),
                selector: svc.selector.clone(),
                attestors: std::sync::Arc::new(spiffe::server::attestor_set(
                    svc.attestors.as_deref(),
                )),
            };
            tasks.push(tokio::spawn(async move {
                if let Err(e) = spiffe::server::serve(path, listener, api).await {
                    tracing::error!(error = %format!("{e:#}"), "the Workload API stopped");
                }
            }));
        }
        WorkloadTasks { tasks }
    }
}

/// A task that ends with the agent's main loop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for WorkloadTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// 90–100% of the interval, so a fleet started together spreads out — but
/// never later than half the credential's remaining life (the server may
/// have granted less than `credential_ttl`, e.g. a role's `max_ttl`).
fn next_renewal(interval: Duration, expires: OffsetDateTime) -> Duration {
    let jittered = interval.mul_f64(rand::rng().random_range(0.9..=1.0));
    let remaining = (expires - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    let half = Duration::try_from(remaining / 2).unwrap_or(Duration::ZERO);
    jittered.min(half).max(Duration::from_secs(1))
}

/// A time as the rest of the logs write it (RFC 3339, UTC), not `time`'s
/// `Display` form (`2026-05-01 12:00:00.0 +00:00:00`).
fn rfc3339(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| utc.unix_timestamp().to_string())
}

/// Exponential from 1s, capped at the renewal interval (and 5 minutes), jittered.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let cap = interval.min(Duration::from_secs(300));
    let base = Duration::from_secs(1u64 << failures.min(9)).min(cap);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_rfc3339_utc() {
        let t = time::macros::datetime!(2026-05-01 14:00:00.5 +02:00);
        assert_eq!(rfc3339(t), "2026-05-01T12:00:00.5Z");
    }

    #[test]
    fn renewal_waits_at_most_half_the_remaining_life() {
        let soon = OffsetDateTime::now_utc() + time::Duration::minutes(10);
        let w = next_renewal(Duration::from_secs(20 * 60), soon);
        assert!(
            w <= Duration::from_secs(5 * 60) && w >= Duration::from_secs(4 * 60),
            "{w:?}"
        );
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let w = next_renewal(Duration::from_secs(20 * 60), later);
        assert!(
            w >= Duration::from_secs(18 * 60) && w <= Duration::from_secs(20 * 60),
            "{w:?}"
        );
        let past = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        assert_eq!(
            next_renewal(Duration::from_secs(60), past),
            Duration::from_secs(1)
        );
    }
}
