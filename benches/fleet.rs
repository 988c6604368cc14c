//! Fleet simulator: one real auth service (release `sigil auth start`, SQLite by
//! default, `--store postgres://…` with FLEET_STORE) carrying INSTANCES bot
//! instances, each with its own instance id and certificate (the key pairs come
//! from a small shared pool: sharing key material is fine for the server).
//!
//! 1. joins every instance (single-use tokens, as a real fleet onboards);
//! 2. restarts the service and times it to ready (admin API answering) and to
//!    the first renewal served;
//! 3. renews open loop: arrivals at a fixed rate (the fleet's steady rate, one
//!    renewal per instance per RENEW_EVERY_SECS, times each of RATE_MULTS), each
//!    on a fresh mutual-TLS connection with the instance's newest certificate
//!    and a heartbeat, latency counted from the arrival's scheduled time (so
//!    queueing in the generator counts too);
//! 4. optionally (CRASH=1) kills the service with SIGKILL in the middle of the
//!    last phase, restarts it, renews every instance whose answer was lost with
//!    the same next key, and checks that none lost its generation and that the
//!    audit chain verifies.
//!
//! Reports per phase: achieved rate, p50/p99/max latency, errors, auth CPU per
//! renewal, auth RSS (and RssAnon), database size, heartbeats written/s.
//!
//! `cargo build --release -p sigil-cli && INSTANCES=100000 cargo bench -p sigil-bench --bench fleet`
//! (env: INSTANCES, RENEW_EVERY_SECS=1200, RATE_MULTS=1,3, PHASE_SECS=60, KEYS=64,
//! JOIN_CONCURRENCY=64, CRASH=0, FLEET_STORE)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sigil_agent::client;
use sigil_bench::{Server, admin_client, bench_role, cpu_seconds, env, join_with_key};
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One simulated instance: its newest certificate, the pool index of its key,
/// and whether a renewal is in flight (its next key is then fixed: a retry
/// after a lost answer must present the same one).
struct Sim {
    cert_pem: std::sync::Mutex<String>,
    key: AtomicUsize,
    generation: AtomicU64,
}

struct Fleet {
    /// Where the server's data dir is, and its store (None: SQLite).
    dir: std::path::PathBuf,
    store: Option<String>,
    pin: String,
    addr: std::sync::Mutex<String>,
    keys: Vec<(String, Vec<u8>)>,
    sims: Vec<Sim>,
}

impl Fleet {
    fn addr(&self) -> String {
        self.addr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Renew instance `i` once on a fresh connection: the next key is the pool key
    /// after its current one (the same on a retry).
    async fn renew(&self, i: usize) -> anyhow::Result<()> {
        let sim = &self.sims[i];
        let cur = sim.key.load(Ordering::Relaxed);
        let next = (cur + 1) % self.keys.len();
        let cert = sim
            .cert_pem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tls = client::tls_config(
            std::slice::from_ref(&self.pin),
            Some(client::ClientCert {
                cert_pem: &cert,
                key_pem: &self.keys[cur].0,
            }),
        )?;
        let mut c = AuthServiceClient::new(client::channel(&self.addr(), tls)?);
        let r = c
            .renew(RenewRequest {
                public_key_spki: self.keys[next].1.clone(),
                ttl_seconds: 3600,
                heartbeat: Some(Heartbeat {
                    hostname: format!("sim-{i}"),
                    version: "fleet-sim".into(),
                    os: "linux".into(),
                    uptime_seconds: 60,
                    one_shot: false,
                }),
            })
            .await?
            .into_inner();
        *sim.cert_pem.lock().unwrap_or_else(|p| p.into_inner()) = r.tls_cert_pem;
        sim.key.store(next, Ordering::Relaxed);
        sim.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// VmRSS and RssAnon of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("RssAnon:") / 1024.0)
}

/// Bytes of the SQLite database with its WAL, in MiB.
fn db_mib(data: &Path) -> f64 {
    ["sigil.db", "sigil.db-wal", "sigil.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len() as f64)
        .sum::<f64>()
        / 1048576.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Creates the bot and its tokens, then joins every instance.
async fn onboard(
    server: &Server,
    count: usize,
    keys: &[(String, Vec<u8>)],
) -> anyhow::Result<(String, Vec<Sim>)> {
    let sock = server.data.join("admin.sock");
    let mut admin = admin_client(sock.clone()).await?;
    let pin = bench_role(&mut admin, "fleet").await?;
    let first = admin
        .add_bot(AddBotRequest {
            name: "fleet".into(),
            roles: vec!["fleet".into()],
            token_ttl_seconds: 24 * 3600,
            ..Default::default()
        })
        .await?
        .into_inner();
    let conc = env("JOIN_CONCURRENCY", 64);
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(1));
    let tokens = Arc::new(std::sync::Mutex::new(vec![first.token]));
    let mut tasks = Vec::new();
    for _ in 0..conc.min(16) {
        let (next, tokens, mut admin) = (next.clone(), tokens.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let r = admin
                    .add_token(AddTokenRequest {
                        bot: "fleet".into(),
                        ttl_seconds: 24 * 3600,
                        ..Default::default()
                    })
                    .await?;
                tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(r.into_inner().token);
            }
            anyhow::Ok(())
        }));
    }
    for h in tasks {
        h.await??;
    }
    let tokens: Vec<String> =
        std::mem::take(&mut *tokens.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "tokens: {} in {:.1} s",
        tokens.len(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let tokens = Arc::new(tokens);
    let certs: Arc<Vec<std::sync::Mutex<String>>> =
        Arc::new((0..count).map(|_| Default::default()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let dial = {
        let (pin, addr) = (pin.clone(), server.addr.clone());
        move || -> anyhow::Result<AuthServiceClient<tonic::transport::Channel>> {
            let tls = client::tls_config(std::slice::from_ref(&pin), None)?;
            Ok(AuthServiceClient::new(client::channel(&addr, tls)?))
        }
    };
    let retried = Arc::new(AtomicUsize::new(0));
    for _ in 0..conc {
        let (next, tokens, certs) = (next.clone(), tokens.clone(), certs.clone());
        let (dial, retried) = (dial.clone(), retried.clone());
        let mut c = dial()?;
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.1.clone()).collect();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tokens.len() {
                    return anyhow::Ok(());
                }
                // A lost answer (a broken connection, an overloaded server) is
                // retried on a new connection with the same token and key, as
                // an agent does.
                let mut attempt = 0;
                let cert = loop {
                    match join_with_key(&mut c, &tokens[i], keys[i % keys.len()].clone()).await {
                        Ok(cert) => break cert,
                        Err(e) if attempt < 3 => {
                            attempt += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            eprintln!("  join {i}: {e:#}; retrying on a new connection");
                            c = dial()?;
                        }
                        Err(e) => return Err(e),
                    }
                };
                *certs[i].lock().unwrap_or_else(|p| p.into_inner()) = cert;
                if (i + 1) % 100_000 == 0 {
                    println!("  joined {}", i + 1);
                }
            }
        }));
    }
    for h in tasks {
        h.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "joins: {count} in {secs:.1} s ({:.0}/s), {} retried",
        count as f64 / secs,
        retried.load(Ordering::Relaxed)
    );
    let certs = Arc::try_unwrap(certs)
        .map_err(|_| anyhow::anyhow!("join tasks still hold the certificates"))?;
    let sims = certs
        .into_iter()
        .enumerate()
        .map(|(i, c)| Sim {
            cert_pem: c,
            key: AtomicUsize::new(i % keys.len()),
            generation: AtomicU64::new(1),
        })
        .collect::<Vec<_>>();
    anyhow::ensure!(
        sims.iter().all(|s| !s
            .cert_pem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()),
        "a join returned no certificate"
    );
    Ok((pin, sims))
}

/// Results of one open-loop phase.
struct Phase {
    rate: f64,
    achieved: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    errors: usize,
    auth_cpu_us: f64,
    gen_cpu_us: f64,
    /// Instances whose renewal failed (their answer may have been lost).
    failed: Vec<usize>,
}

/// Arrivals at `rate`/s for `secs`, instance after instance from `*cursor`. With
/// `kill_at`, the server is killed (SIGKILL) that far into the phase and started again.
async fn open_loop(
    fleet: &Arc<Fleet>,
    server: &mut Server,
    rate: f64,
    secs: f64,
    cursor: &mut usize,
    kill_at: Option<Duration>,
) -> anyhow::Result<Phase> {
    let n = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let cpu0 = server.cpu();
    let gen0 = cpu_seconds();
    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut killed = kill_at.is_none();
    let mut crash_cpu = 0.0;
    for k in 0..n {
        let due = t0 + interval * k as u32;
        tokio::time::sleep_until(due.into()).await;
        if !killed && t0.elapsed() >= kill_at.unwrap_or_default() {
            killed = true;
            crash_cpu = server.cpu() - cpu0;
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(server.child.id() as i32, libc::SIGKILL) };
            let _ = server.child.wait();
            let t = Instant::now();
            *server = Server::start_on(&fleet.dir, "fleet", fleet.store.as_deref())?;
            server.ready(t).await?;
            *fleet.addr.lock().unwrap_or_else(|p| p.into_inner()) = server.addr.clone();
            println!(
                "  killed with SIGKILL and restarted: ready in {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        let i = (*cursor + k) % fleet.sims.len();
        let (fleet, tx) = (fleet.clone(), tx.clone());
        tokio::spawn(async move {
            let r = fleet.renew(i).await;
            let _ = tx.send((i, due.elapsed(), r.is_ok()));
        });
    }
    drop(tx);
    let mut lats = Vec::with_capacity(n);
    let mut failed = Vec::new();
    while let Some((i, lat, ok)) = rx.recv().await {
        if ok {
            lats.push(lat);
        } else {
            failed.push(i);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    *cursor = (*cursor + n) % fleet.sims.len();
    lats.sort();
    let pct = |p: usize| {
        lats.get((lats.len() * p / 100).min(lats.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let done = lats.len().max(1) as f64;
    Ok(Phase {
        rate,
        achieved: lats.len() as f64 / wall,
        p50: pct(50),
        p99: pct(99),
        max: lats.last().copied().unwrap_or_default(),
        errors: failed.len(),
        auth_cpu_us: (crash_cpu + server.cpu()
            - if killed && kill_at.is_some() {
                0.0
            } else {
                cpu0
            })
            / done
            * 1e6,
        gen_cpu_us: (cpu_seconds() - gen0) / done * 1e6,
        failed,
    })
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let count = env("INSTANCES", 100_000);
    let every = env("RENEW_EVERY_SECS", 1200) as f64;
    let phase_secs = env("PHASE_SECS", 60) as f64;
    let crash = env("CRASH", 0) == 1;
    let mults: Vec<f64> = std::env::var("RATE_MULTS")
        .unwrap_or_else(|_| "1,3".into())
        .split(',')
        .filter_map(|m| m.trim().parse().ok())
        .collect();
    let store = std::env::var("FLEET_STORE").ok();
    let keys: Vec<(String, Vec<u8>)> = (0..env("KEYS", 64))
        .map(|_| TlsKeyPair::generate().map(|k| (k.to_pkcs8_pem(), k.spki_der())))
        .collect::<Result<_, _>>()?;
    let dir = tempfile::Builder::new().prefix("sigil-fleet-").tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "machine: {} cores; {count} instances on {}, one renewal each per {every} s",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            if store.is_some() { "PostgreSQL" } else { "SQLite" }
        );
        let mut server = Server::start_on(dir.path(), "fleet", store.as_deref())?;
        server.ready(Instant::now()).await?;
        let (pin, sims) = onboard(&server, count, &keys).await?;
        let (rss, anon) = rss_mib(server.child.id());
        println!("after joining: auth RSS {rss:.0} MiB (anon {anon:.0}), database {:.0} MiB", db_mib(&server.data));

        // Restart: time to ready, and to the first renewal served.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
        let _ = server.child.wait();
        let t = Instant::now();
        server = Server::start_on(dir.path(), "fleet", store.as_deref())?;
        let ready = server.ready(t).await?;
        let fleet = Arc::new(Fleet { dir: dir.path().to_path_buf(), store: store.clone(), pin, addr: std::sync::Mutex::new(server.addr.clone()), keys, sims });
        fleet.renew(count / 2).await.context("first renewal after the restart")?;
        let first = t.elapsed();
        let (rss, anon) = rss_mib(server.child.id());
        println!(
            "restart with {count} instances: ready in {:.2} s, first renewal served {:.2} s after the start; RSS {rss:.0} MiB (anon {anon:.0})",
            ready.as_secs_f64(),
            first.as_secs_f64()
        );

        let steady = count as f64 / every;
        let mut cursor = 0;
        for (k, m) in mults.iter().enumerate() {
            let last = k + 1 == mults.len();
            let kill_at = (crash && last).then(|| Duration::from_secs_f64(phase_secs / 2.0));
            let p = open_loop(&fleet, &mut server, steady * m, phase_secs, &mut cursor, kill_at).await?;
            let (rss, anon) = rss_mib(server.child.id());
            println!(
                "{m}x steady ({:.0}/s offered): {:.0}/s served, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} errors; CPU per renewal: auth {:.0} us, generator {:.0} us; auth RSS {rss:.0} MiB (anon {anon:.0}); database {:.0} MiB; heartbeats written {:.0}/s",
                p.rate, p.achieved, ms(p.p50), ms(p.p99), ms(p.max), p.errors, p.auth_cpu_us, p.gen_cpu_us, db_mib(&server.data), p.achieved
            );
            if kill_at.is_some() {
                // Every renewal whose answer was lost retries with the same next key.
                let mut lost = 0;
                for &i in &p.failed {
                    fleet.renew(i).await.with_context(|| format!("instance {i} could not renew after the crash"))?;
                    lost += 1;
                }
                let mut admin = admin_client(server.data.join("admin.sock")).await?;
                let v = admin.verify_audit(VerifyAuditRequest::default()).await?.into_inner();
                anyhow::ensure!(v.intact, "audit chain broken after the crash: {} at {}", v.reason, v.bad_seq);
                println!("after SIGKILL: {lost} renewals in flight retried with the same key, all accepted; audit chain of {} events intact", v.count);
            }
        }
        // Every instance still renews with what it holds: no generation was lost.
        let probe: Vec<usize> = (0..count).step_by((count / 1000).max(1)).collect();
        for &i in &probe {
            fleet.renew(i).await.with_context(|| format!("instance {i} (generation {}) could not renew", fleet.sims[i].generation.load(Ordering::Relaxed)))?;
        }
        println!("{} instances sampled across the fleet renew with their newest certificate", probe.len());
        anyhow::Ok(())
    })
}
