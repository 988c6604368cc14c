//! High availability on PostgreSQL, measured against SQLite in the same run:
//!
//! 1. warm renewals/s: 1 auth server on SQLite, 1 on PostgreSQL, 2 on one PostgreSQL
//!    (instances split between them), same instances and concurrency;
//! 2. lock propagation: a lock added through server A's admin API until server B pushes
//!    `locked` on a bot's `WatchWorkloadState` stream (what the agent's Workload API
//!    acts on), against the same through B itself (same-server baseline);
//! 3. time for a new server to become ready with INSTANCES_READY bot instances stored.
//!
//! Needs a release `sigil` and PostgreSQL 15 binaries (`scripts/test-postgres`):
//! `cargo build --release -p sigil-cli && cargo bench -p sigil-bench --bench ha`
//! (env: INSTANCES, CONCURRENCY, ROUNDS, LOCKS, INSTANCES_READY, BENCH_POSTGRES = an
//! admin URL of a server to use instead of starting one)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sigil_agent::client;
use sigil_bench::{
    Instance, Server, admin_client, bench_role, env, free_port, join, process_cpu_seconds, renew,
    run_workers,
};
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::*;
use tokio::sync::Mutex;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU seconds of every process of the PostgreSQL server (postmaster and backends).
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(process_cpu_seconds)
        .sum()
}

fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fresh_db(admin: &str, name: &str) -> anyhow::Result<String> {
    psql(
        admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )?;
    psql(admin, &format!("CREATE DATABASE {name}"))?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

struct Cluster {
    servers: Vec<Server>,
    pin: String,
}

/// Starts `n` servers (on `store`, or SQLite for None) and a role `bench`.
async fn cluster(dir: &Path, tag: &str, n: usize, store: Option<&str>) -> anyhow::Result<Cluster> {
    let key = dir.join("audit-key.json");
    let mut servers = Vec::new();
    for i in 0..n {
        let s = Server::start(dir, &format!("{tag}-{i}"), store, &key)?;
        s.ready(Instant::now()).await?;
        servers.push(s);
    }
    let mut admin = admin_client(servers[0].data.join("admin.sock")).await?;
    let pin = bench_role(&mut admin, "bench").await?;
    Ok(Cluster { servers, pin })
}

/// Joins `count` instances of bot `bot`, the i-th through server i % servers.
async fn join_instances(
    c: &Cluster,
    bot: &str,
    count: usize,
) -> anyhow::Result<Vec<(usize, Instance)>> {
    let mut admin = admin_client(c.servers[0].data.join("admin.sock")).await?;
    let first = admin
        .add_bot(AddBotRequest {
            name: bot.into(),
            roles: vec!["bench".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut tokens = vec![first.token];
    while tokens.len() < count {
        let r = admin
            .add_token(AddTokenRequest {
                bot: bot.into(),
                ttl_seconds: 3600,
                ..Default::default()
            })
            .await?;
        tokens.push(r.into_inner().token);
    }
    let mut chans = Vec::new();
    for s in &c.servers {
        let tls = client::tls_config(std::slice::from_ref(&c.pin), None)?;
        chans.push(AuthServiceClient::new(client::channel(&s.addr, tls)?));
    }
    let mut out = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let which = i % c.servers.len();
        out.push((which, join(&mut chans[which], tok).await?));
    }
    Ok(out)
}

/// Median warm renewals/s over `rounds`, and CPU µs per renewal (auth servers, PostgreSQL).
async fn warm_renewals(
    c: &Cluster,
    insts: &[(usize, Arc<Mutex<Instance>>)],
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<(f64, f64, f64, Duration)> {
    let mut rates = Vec::new();
    let mut cpu = Vec::new();
    let mut lats = Vec::new();
    for _ in 0..rounds {
        let mut work = Vec::new();
        for (which, inst) in insts {
            let i = inst.lock().await;
            let tls = client::tls_config(
                std::slice::from_ref(&c.pin),
                Some(client::ClientCert {
                    cert_pem: &i.cert_pem,
                    key_pem: &i.key_pem,
                }),
            )?;
            let ch = client::channel(&c.servers[*which].addr, tls)?;
            AuthServiceClient::new(ch.clone())
                .ping(PingRequest {})
                .await
                .context("warm-up ping")?;
            work.push((inst.clone(), ch));
        }
        let n = work.len() as f64;
        let queue = Arc::new(std::sync::Mutex::new(work));
        let srv0: f64 = c.servers.iter().map(Server::cpu).sum();
        let pg0 = postgres_cpu();
        let t = Instant::now();
        let round = run_workers(concurrency, move || {
            let queue = queue.clone();
            async move {
                let Some((inst, ch)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    return Ok(None);
                };
                let s = Instant::now();
                renew(AuthServiceClient::new(ch), &inst).await?;
                Ok(Some(s.elapsed()))
            }
        })
        .await?;
        let secs = t.elapsed().as_secs_f64();
        rates.push(n / secs);
        let srv: f64 = c.servers.iter().map(Server::cpu).sum::<f64>() - srv0;
        cpu.push((srv / n * 1e6, (postgres_cpu() - pg0) / n * 1e6));
        lats.extend(round);
    }
    rates.sort_by(f64::total_cmp);
    cpu.sort_by(|a, b| a.0.total_cmp(&b.0));
    lats.sort();
    let p99 = lats.get(lats.len() * 99 / 100).copied().unwrap_or_default();
    let (srv, pg) = cpu[cpu.len() / 2];
    Ok((rates[rates.len() / 2], srv, pg, p99))
}

/// Lock-to-enforcement latencies: `LOCKS` bots, each with one instance joined through
/// `watch_on` and watching its state there; each is locked through `lock_via`.
async fn lock_latencies(
    c: &Cluster,
    lock_via: usize,
    watch_on: usize,
    tag: &str,
    locks: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut admin = admin_client(c.servers[lock_via].data.join("admin.sock")).await?;
    let mut out = Vec::new();
    for i in 0..locks {
        let bot = format!("{tag}{i}");
        let created = admin
            .add_bot(AddBotRequest {
                name: bot.clone(),
                roles: vec!["bench".into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        let tls = client::tls_config(std::slice::from_ref(&c.pin), None)?;
        let mut anon = AuthServiceClient::new(client::channel(&c.servers[watch_on].addr, tls)?);
        let inst = join(&mut anon, &created.token).await?;
        let tls = client::tls_config(
            std::slice::from_ref(&c.pin),
            Some(client::ClientCert {
                cert_pem: &inst.cert_pem,
                key_pem: &inst.key_pem,
            }),
        )?;
        let mut me = AuthServiceClient::new(client::channel(&c.servers[watch_on].addr, tls)?);
        let mut stream = me
            .watch_workload_state(WatchWorkloadStateRequest {})
            .await?
            .into_inner();
        let first = stream.message().await?.context("no initial state")?;
        anyhow::ensure!(!first.locked, "{bot} locked before the lock");
        let t = Instant::now();
        admin
            .add_lock(AddLockRequest {
                target_kind: "bot".into(),
                target_value: bot.clone(),
                ttl_seconds: 0,
                message: "bench".into(),
            })
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Ok(Ok(Some(s))) if s.locked => break,
                Ok(Ok(Some(_))) => {}
                // The stream ends when the bot is locked: that is enforcement too.
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => anyhow::bail!("{bot}: lock not enforced within 10 s"),
            }
        }
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let instances = env("INSTANCES", 1000);
    let concurrency = env("CONCURRENCY", 32);
    let rounds = env("ROUNDS", 5);
    let locks = env("LOCKS", 200);
    let ready_instances = env("INSTANCES_READY", 100_000);

    let dir = tempfile::tempdir()?;
    let (admin_url, _pg_dir) = match std::env::var("BENCH_POSTGRES") {
        Ok(u) => (u, None),
        Err(_) => {
            let pg_dir = tempfile::Builder::new()
                .prefix("sigil-bench-pg-")
                .tempdir()?;
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres");
            let out = Command::new(&script)
                .args([
                    "start",
                    &pg_dir.path().display().to_string(),
                    &free_port()?.to_string(),
                ])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "starting PostgreSQL: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                Some(PgGuard(pg_dir, script)),
            )
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!("machine: {} cores; {instances} instances, concurrency {concurrency}, {rounds} rounds",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        let mut rows = Vec::new();
        for (tag, n, pg) in [("sqlite", 1, false), ("pg1", 1, true), ("pg2", 2, true)] {
            let url = if pg { Some(fresh_db(&admin_url, &format!("bench_{tag}"))?) } else { None };
            let d = dir.path().join(tag);
            std::fs::create_dir_all(&d)?;
            let c = cluster(&d, tag, n, url.as_deref()).await?;
            let insts: Vec<(usize, Arc<Mutex<Instance>>)> = join_instances(&c, "bench", instances)
                .await?
                .into_iter()
                .map(|(w, i)| (w, Arc::new(Mutex::new(i))))
                .collect();
            let (rate, srv, pgcpu, p99) = warm_renewals(&c, &insts, concurrency, rounds).await?;
            println!("warm renewals, {tag} ({n} server{}): median {rate:.0}/s, p99 {:.1} ms; CPU per renewal: auth {srv:.0} us{}",
                if n > 1 { "s" } else { "" }, ms(p99),
                if pg { format!(", PostgreSQL {pgcpu:.0} us") } else { String::new() });
            rows.push((tag, rate));
            if tag == "pg2" {
                let cross = lock_latencies(&c, 0, 1, "cross", locks).await?;
                let local = lock_latencies(&c, 1, 1, "local", locks).await?;
                for (what, v) in [("through A, enforced by B", &cross), ("through B, enforced by B (baseline)", &local)] {
                    println!("lock {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {}",
                        ms(v[v.len() / 2]), ms(v[v.len() * 99 / 100]), ms(v[v.len() - 1]), v.len());
                }
            }
        }
        let base = rows[0].1;
        for (tag, r) in &rows[1..] {
            println!("ratio {tag} / sqlite: {:.2}", r / base);
        }

        // A new server's start with many stored instances (copies of one joined record).
        let url = fresh_db(&admin_url, "bench_ready")?;
        let d = dir.path().join("ready");
        std::fs::create_dir_all(&d)?;
        let c = cluster(&d, "ready", 1, Some(&url)).await?;
        join_instances(&c, "fleet", 1).await?;
        psql(&url, &format!(
            "INSERT INTO kv (key, value, revision, expires_ns) \
             SELECT '/bot_instances/fleet/copy-' || g, k.value, k.revision, k.expires_ns \
             FROM kv k, generate_series(1, {}) g WHERE k.key LIKE '/bot_instances/fleet/%'",
            ready_instances.saturating_sub(1)))?;
        let stored = psql(&url, "SELECT count(*) FROM kv WHERE key LIKE '/bot_instances/%'")?;
        let key = d.join("audit-key.json");
        let mut times = Vec::new();
        for i in 0..3 {
            let t = Instant::now();
            let s = Server::start(&d, &format!("late-{i}"), Some(&url), &key)?;
            times.push(s.ready(t).await?);
        }
        times.sort();
        println!("a new server ready (admin API answering) with {stored} bot instances stored: median {:.2} s (min {:.2}, max {:.2})",
            times[1].as_secs_f64(), times[0].as_secs_f64(), times[2].as_secs_f64());
        anyhow::Ok(())
    })
}

/// Stops the PostgreSQL server this benchmark started.
struct PgGuard(tempfile::TempDir, PathBuf);

impl Drop for PgGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.1)
            .args(["stop", &self.0.path().display().to_string()])
            .output();
    }
}
