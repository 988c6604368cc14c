//! The SPIFFE Workload API of the real agent, over its Unix socket.
//!
//! Starts the real auth service and a real agent (`sigil agent start` with a
//! `workload-api` service, default attestors) as their own processes, then:
//! 1. memory: the agent's VmRSS / VmHWM (from /proc) before any client, and
//!    after one client (the agent hashed this executable and issued the SVID);
//! 2. rotation push: STREAMS connections, each with an open FetchX509SVID
//!    stream whose first message was read; a new `workload_identity` created
//!    with the admin CLI bumps the policy revision, the agent re-issues the
//!    (shared) SVID and pushes it to every stream. Timed from just before the
//!    `sigil create` command until each stream has its next message;
//!    ROTATIONS times. The agent's memory with the streams open and after they
//!    close;
//! 3. latency: CLIENTS tasks (one Unix-socket connection each) in a closed
//!    loop; one call = open FetchX509SVID, read the first message, drop the
//!    stream. The SVID is cached (one entry: every client has the same uid and
//!    executable). Baseline in the same run: FetchX509Bundles, which attests
//!    the caller the same way but issues nothing. Then the same clients in an
//!    open loop at RATE calls/s in all (latency from the start of each call), and
//!    one client alone;
//! 4. first contact: the agent restarted, STREAMS streams opened at once by
//!    an executable it has not hashed yet: time to every first message and
//!    the memory peak.
//!
//! ```sh
//! cargo build --release -p sigil-cli && cargo bench -p sigil-bench --bench workload_api
//! ```
//! (env: CLIENTS=100, DURATION_SECS=10, WARMUP_SECS=2, SOLO_SECS=5, RATE=1000 (open loop),
//! STREAMS=1000, ROTATIONS=5, SIGIL_BIN=path/to/sigil)

use sigil_bench::{cpu_seconds, env, free_port, process_cpu_seconds, sigil_binary};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_proto::workload::{X509BundlesRequest, X509svidRequest, X509svidResponse};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The same allocator as the `sigil` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = SpiffeWorkloadApiClient<Channel>;

const ROLE: &str = "kind: role
version: v1
metadata: {name: bench-role}
spec:
  allow:
    logins: [bench]
    workload_identity_labels: {env: [bench]}
";

const IDENTITY: &str = "kind: workload_identity
version: v1
metadata: {name: bench-svc, labels: {env: bench}}
spec:
  spiffe:
    id: /svc/bench/{{ workload.unix.uid }}
    hint: bench
    x509: {ttl: 1h}
";

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sigil --data-dir DATA args...`, which must succeed; its stdout.
fn admin(sigil: &Path, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(sigil)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .with_context(|| format!("running {}", sigil.display()))?;
    anyhow::ensure!(
        o.status.success(),
        "sigil {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn create(sigil: &Path, data: &Path, file: &Path, yaml: &str) -> anyhow::Result<()> {
    std::fs::write(file, yaml)?;
    admin(sigil, data, &["create", "-f", &file.to_string_lossy()])?;
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        anyhow::ensure!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Start the agent and wait until its Workload API serves.
fn start_agent(sigil: &Path, cfg: &Path, log: &Path) -> anyhow::Result<Proc> {
    let agent = Proc(
        Command::new(sigil)
            .args(["agent", "start", "--config"])
            .arg(cfg)
            .env("SIGIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting the agent")?,
    );
    wait_for("the agent's Workload API", Duration::from_secs(30), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("Workload API listening"))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(agent)
}

fn main() -> anyhow::Result<()> {
    let clients_n = env("CLIENTS", 100);
    let duration = Duration::from_secs(env("DURATION_SECS", 10) as u64);
    let warmup = Duration::from_secs(env("WARMUP_SECS", 2) as u64);
    let solo = Duration::from_secs(env("SOLO_SECS", 5) as u64);
    let streams_n = env("STREAMS", 1000);
    let rotations = env("ROTATIONS", 5);

    // Both this process and the agent (which inherits the limit) hold one
    // descriptor per connection (the agent two: the socket and a pidfd).
    let nofile = raise_nofile();
    anyhow::ensure!(
        nofile >= (2 * streams_n.max(clients_n) + 256) as u64,
        "RLIMIT_NOFILE is {nofile} even after raising it; STREAMS={streams_n} needs more"
    );

    let sigil = sigil_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?;

    // The auth service.
    let auth = Proc(
        Command::new(&sigil)
            .args(["auth", "start", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--public-listen", "127.0.0.1:0"])
            .args(["--cluster-name", "bench.test"])
            .env("SIGIL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("auth.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", sigil.display()))?,
    );
    let admin_sock = data.join("admin.sock");
    wait_for("the auth service", Duration::from_secs(30), || {
        admin_sock.exists() && admin(&sigil, &data, &["status", "--format", "json"]).is_ok()
    })?;
    let status: serde_json::Value =
        serde_json::from_str(&admin(&sigil, &data, &["status", "--format", "json"])?)?;
    let pin = status["ca_pin"].as_str().context("ca_pin")?.to_string();
    create(&sigil, &data, &dir.path().join("role.yaml"), ROLE)?;
    create(&sigil, &data, &dir.path().join("id.yaml"), IDENTITY)?;
    let bot: serde_json::Value = serde_json::from_str(&admin(
        &sigil,
        &data,
        &[
            "bots",
            "add",
            "bench-bot",
            "--roles",
            "bench-role",
            "--format",
            "json",
        ],
    )?)?;
    let token = bot["token"].as_str().context("token")?;

    // The agent with its Workload API socket.
    let sock = dir.path().join("run/workload.sock");
    let cfg = format!(
        "version: v1
auth_server: 127.0.0.1:{port}
ca_pins: [{pin}]
onboarding: {{join_method: token, token: {token}}}
storage: {{type: directory, path: {storage}}}
services:
  - type: workload-api
    listen: unix://{sock}
    selector: {{labels: {{env: bench}}}}
",
        storage = dir.path().join("storage").display(),
        sock = sock.display(),
    );
    let cfg_path = dir.path().join("agent.yaml");
    std::fs::write(&cfg_path, cfg)?;
    let agent_log = dir.path().join("agent.log");
    let agent = start_agent(&sigil, &cfg_path, &agent_log)?;
    let agent_pid = agent.pid();
    let mem_idle = Mem::of(agent_pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("wl-client")
        .worker_threads(2)
        .enable_all()
        .build()?;
    let setup = Setup {
        sigil: sigil.clone(),
        data: data.clone(),
        dir: dir.path().to_path_buf(),
        sock: sock.clone(),
        agent_pid,
        idle_threads: mem_idle.threads,
        clients_n,
        duration,
        warmup,
        solo,
        streams_n,
        rotations,
        rate: env("RATE", 1000),
    };
    let result = rt.block_on(run(&setup));
    drop(agent);

    // First contact, on a restarted agent: STREAMS workloads of an executable
    // it has not seen, all at once.
    let result = result.and_then(|r| {
        eprintln!("phase: restarting the agent for the first-contact burst");
        let cold_log = dir.path().join("agent-cold.log");
        let agent = start_agent(&sigil, &cfg_path, &cold_log)?;
        let idle = Mem::of(agent.pid());
        let cold = rt.block_on(first_contact(&setup, agent.pid(), idle.threads));
        drop(agent);
        Ok((r, idle, cold?))
    });
    drop(rt);
    drop(auth);
    let (r, cold_idle, cold) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "agent log (tail):\n{}",
                tail(&std::fs::read_to_string(&agent_log).unwrap_or_default(), 30)
            );
            return Err(e);
        }
    };

    println!();
    println!(
        "machine: {} cores; RLIMIT_NOFILE {nofile}; sigil {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        sigil.display()
    );
    println!(
        "== 1. FetchX509SVID latency, SVID cached, {clients_n} clients (one connection each), closed loop, {}s each ==",
        duration.as_secs()
    );
    r.svid.print("FetchX509SVID, first message");
    r.bundles
        .print("FetchX509Bundles, first message (baseline: attestation + transport, no issuance)");
    println!(
        "   open loop: the same {clients_n} clients, {} calls/s in all, latency from the start of each call:",
        env("RATE", 1000)
    );
    r.svid_open.print("FetchX509SVID, open loop");
    println!("   one client alone, {}s each:", solo.as_secs());
    r.svid_solo.print("FetchX509SVID, 1 client");
    r.bundles_solo.print("FetchX509Bundles, 1 client");
    println!(
        "== 2. Rotation push to {streams_n} open FetchX509SVID streams ({} rotations) ==",
        r.rot.len()
    );
    println!(
        "   opening {streams_n} connections: {:.0} ms; then {streams_n} streams to first message: {:.0} ms",
        ms(r.connect_time),
        ms(r.open_time)
    );
    for (i, x) in r.rot.iter().enumerate() {
        println!(
            "   rotation {i}: `sigil create` {:.0} ms; streams updated {}/{streams_n} (new certificate on {}); first {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms; agent CPU {:.0} ms",
            ms(x.create),
            x.lat.len(),
            x.changed,
            ms(pct(&x.lat, 0.0)),
            ms(pct(&x.lat, 0.5)),
            ms(pct(&x.lat, 0.99)),
            ms(last(&x.lat)),
            x.agent_cpu * 1000.0
        );
    }
    let med = |f: &dyn Fn(&Rotation) -> Duration| {
        let mut v: Vec<Duration> = r.rot.iter().map(f).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let worst = r.rot.iter().map(|x| last(&x.lat)).max().unwrap_or_default();
    println!(
        "   median of rotations: `sigil create` {:.0} ms; first stream {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, LAST stream {:.0} ms (minus create: {:.0} ms); worst last stream {:.0} ms",
        ms(med(&|x| x.create)),
        ms(med(&|x| pct(&x.lat, 0.0))),
        ms(med(&|x| pct(&x.lat, 0.5))),
        ms(med(&|x| pct(&x.lat, 0.99))),
        ms(med(&|x| last(&x.lat))),
        ms(med(&|x| last(&x.lat).saturating_sub(x.create))),
        ms(worst)
    );
    if r.extra_msgs > 0 {
        println!(
            "   note: {} messages arrived outside a rotation",
            r.extra_msgs
        );
    }
    println!("== 3. Agent memory (/proc/PID/status) ==");
    mem_idle.print("before any client");
    r.mem_probe
        .print("after one client (executable hashed, SVID issued), closed");
    r.mem_conns.print(&format!(
        "{streams_n} connections (HTTP/2 up), no stream yet"
    ));
    r.mem_open.print(&format!(
        "{streams_n} streams open, 1 s after the last opened"
    ));
    r.mem_steady.print(&format!(
        "{streams_n} streams open, steady (the opening's extra threads gone)"
    ));
    r.mem_rotated
        .print(&format!("{streams_n} streams open, after the rotations"));
    r.mem_closed.print("streams closed (3 s later)");
    r.mem_end.print(&format!(
        "after the latency phase ({clients_n} clients, closed 3 s earlier)"
    ));
    println!(
        "== First contact: {streams_n} workloads of an executable a restarted agent has not seen, at once =="
    );
    cold_idle.print("restarted agent, before any client");
    println!(
        "   {streams_n} streams to first message: {:.0} ms (connect {:.0} ms)",
        ms(cold.open_time),
        ms(cold.connect_time)
    );
    cold.mem_open.print(&format!(
        "{streams_n} streams open, 1 s after the last opened"
    ));
    cold.mem_steady.print(&format!(
        "{streams_n} streams open, steady (the opening's extra threads gone)"
    ));
    cold.mem_closed.print("streams closed (3 s later)");
    Ok(())
}

struct Setup {
    sigil: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    sock: PathBuf,
    agent_pid: u32,
    idle_threads: u64,
    clients_n: usize,
    duration: Duration,
    warmup: Duration,
    solo: Duration,
    streams_n: usize,
    rotations: usize,
    /// Open-loop total call rate (calls per second over all clients).
    rate: usize,
}

struct Report {
    svid_open: Stats,
    svid: Stats,
    bundles: Stats,
    svid_solo: Stats,
    bundles_solo: Stats,
    connect_time: Duration,
    open_time: Duration,
    rot: Vec<Rotation>,
    extra_msgs: usize,
    mem_probe: Mem,
    mem_conns: Mem,
    mem_open: Mem,
    mem_steady: Mem,
    mem_rotated: Mem,
    mem_closed: Mem,
    mem_end: Mem,
}

struct Rotation {
    create: Duration,
    /// Per stream, from just before `sigil create` to its next message; sorted.
    lat: Vec<Duration>,
    changed: usize,
    agent_cpu: f64,
}

struct FirstContact {
    connect_time: Duration,
    open_time: Duration,
    mem_open: Mem,
    mem_steady: Mem,
    mem_closed: Mem,
}

/// One message on an open stream: (stream, arrival, leaf certificate or error).
type Msg = (usize, Instant, Result<Vec<u8>, String>);

/// Wait (at most 30 s) until the agent is back to `idle` threads: the
/// blocking-pool threads an opening started idle out after 10 s.
async fn settle(pid: u32, idle: u64) -> Mem {
    let t = Instant::now();
    while Mem::of(pid).threads > idle && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Mem::of(pid)
}

async fn run(s: &Setup) -> anyhow::Result<Report> {
    // One client first: the agent hashes this executable and issues the SVID
    // (a workload's usual first contact), so the figures below are about
    // connections, not about that one-off work.
    eprintln!("phase: one client");
    let mut c = connect(s.sock.clone()).await?;
    call(&mut c, Call::Svid).await?;
    drop(c);
    let mem_probe = settle(s.agent_pid, s.idle_threads).await;

    // ---- 2 + 3: STREAMS open streams, rotation push, memory ----
    eprintln!("phase: opening {} streams", s.streams_n);
    let t = Instant::now();
    let conns = connect_many(&s.sock, s.streams_n).await?;
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_conns = Mem::of(s.agent_pid);
    let t = Instant::now();
    let opened = open_streams(&conns).await?;
    let open_time = t.elapsed();
    let mut last_cert: Vec<Vec<u8>> = Vec::with_capacity(s.streams_n);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let mut readers = Vec::with_capacity(s.streams_n);
    for (i, mut st, cert) in opened {
        last_cert.push(cert);
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            loop {
                let r = st.message().await;
                let now = Instant::now();
                let (msg, end) = match r {
                    Ok(Some(m)) => (
                        m.svids
                            .first()
                            .map(|v| v.x509_svid.clone())
                            .ok_or_else(|| "a message without an SVID".to_string()),
                        false,
                    ),
                    Ok(None) => (Err("stream ended".to_string()), true),
                    Err(e) => (Err(format!("stream error: {e}")), true),
                };
                if tx.send((i, now, msg)).is_err() || end {
                    return;
                }
            }
        }));
    }
    drop(tx);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_open = Mem::of(s.agent_pid);
    let mem_steady = settle(s.agent_pid, s.idle_threads).await;

    let mut rot = Vec::new();
    let mut extra_msgs = 0;
    for r in 0..s.rotations {
        eprintln!("phase: rotation {r}");
        while let Ok(m) = rx.try_recv() {
            extra_msgs += 1;
            if let (i, _, Ok(c)) = m {
                last_cert[i] = c;
            }
        }
        let file = s.dir.join(format!("rotate-{r}.yaml"));
        let yaml = format!(
            "kind: workload_identity\nversion: v1\nmetadata: {{name: rotate-{r}, labels: {{env: other}}}}\nspec:\n  spiffe: {{id: /rotate/{r}}}\n"
        );
        std::fs::write(&file, yaml)?;
        let (sigil, data) = (s.sigil.clone(), s.data.clone());
        let cpu0 = process_cpu_seconds(s.agent_pid);
        let t0 = Instant::now();
        let cmd = tokio::task::spawn_blocking(move || {
            let r = admin(&sigil, &data, &["create", "-f", &file.to_string_lossy()]);
            (r, Instant::now())
        });
        let mut got: Vec<Option<Duration>> = vec![None; s.streams_n];
        let mut n = 0;
        let mut changed = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while n < s.streams_n {
            let Ok(m) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            let (i, at, msg) = m.context("every stream reader ended")?;
            let cert = msg.map_err(|e| anyhow::anyhow!("stream {i}: {e}"))?;
            if got[i].is_some() {
                extra_msgs += 1;
                continue;
            }
            got[i] = Some(at.saturating_duration_since(t0));
            n += 1;
            if cert != last_cert[i] {
                changed += 1;
            }
            last_cert[i] = cert;
        }
        let agent_cpu = process_cpu_seconds(s.agent_pid) - cpu0;
        let (res, done) = cmd.await?;
        res?;
        let mut lat: Vec<Duration> = got.into_iter().flatten().collect();
        lat.sort();
        eprintln!(
            "rotation {r}: {}/{} streams updated, last after {:.0} ms",
            lat.len(),
            s.streams_n,
            ms(last(&lat))
        );
        rot.push(Rotation {
            create: done - t0,
            lat,
            changed,
            agent_cpu,
        });
        // The agent re-issues on a 500 ms tick: vary the phase between
        // rotations instead of locking onto one.
        tokio::time::sleep(Duration::from_millis(1000 + (r as u64 * 233) % 500)).await;
    }
    let mem_rotated = Mem::of(s.agent_pid);
    for h in &readers {
        h.abort();
    }
    for h in readers {
        let _ = h.await;
    }
    drop(rx);
    drop(conns);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mem_closed = Mem::of(s.agent_pid);

    // ---- 1: latency, closed loop ----
    let clients = connect_many(&s.sock, s.clients_n).await?;
    eprintln!("phase: latency warm-up");
    closed_loop(&clients, Call::Svid, s.warmup, s.agent_pid).await?;
    closed_loop(&clients, Call::Bundles, s.warmup, s.agent_pid).await?;
    eprintln!("phase: latency FetchX509Bundles, {} clients", s.clients_n);
    let bundles = closed_loop(&clients, Call::Bundles, s.duration, s.agent_pid).await?;
    eprintln!("phase: latency FetchX509SVID, {} clients", s.clients_n);
    let svid = closed_loop(&clients, Call::Svid, s.duration, s.agent_pid).await?;
    eprintln!("phase: latency, open loop at {} calls/s", s.rate);
    let svid_open = open_loop(&clients, Call::Svid, s.rate as f64, s.duration, s.agent_pid).await?;
    eprintln!("phase: latency, 1 client");
    let svid_solo = closed_loop(&clients[..1], Call::Svid, s.solo, s.agent_pid).await?;
    let bundles_solo = closed_loop(&clients[..1], Call::Bundles, s.solo, s.agent_pid).await?;
    drop(clients);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mem_end = Mem::of(s.agent_pid);
    Ok(Report {
        svid_open,
        svid,
        bundles,
        svid_solo,
        bundles_solo,
        connect_time,
        open_time,
        rot,
        extra_msgs,
        mem_probe,
        mem_conns,
        mem_open,
        mem_steady,
        mem_rotated,
        mem_closed,
        mem_end,
    })
}

/// STREAMS streams opened at once on an agent that has not seen this
/// executable yet (nor issued its SVID).
async fn first_contact(s: &Setup, pid: u32, idle_threads: u64) -> anyhow::Result<FirstContact> {
    eprintln!("phase: first contact, {} streams", s.streams_n);
    let t = Instant::now();
    let conns = connect_many(&s.sock, s.streams_n).await?;
    let connect_time = t.elapsed();
    let t = Instant::now();
    let opened = open_streams(&conns).await?;
    let open_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_open = Mem::of(pid);
    let mem_steady = settle(pid, idle_threads).await;
    drop(opened);
    drop(conns);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mem_closed = Mem::of(pid);
    Ok(FirstContact {
        connect_time,
        open_time,
        mem_open,
        mem_steady,
        mem_closed,
    })
}

fn last(v: &[Duration]) -> Duration {
    v.last().copied().unwrap_or_default()
}

fn with_header<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

type Opened = Vec<(usize, tonic::Streaming<X509svidResponse>, Vec<u8>)>;

/// A FetchX509SVID stream on each connection, its first message read.
async fn open_streams(conns: &[Client]) -> anyhow::Result<Opened> {
    futures::future::try_join_all(
        conns
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut c)| async move {
                let mut st = c
                    .fetch_x509svid(with_header(X509svidRequest {}))
                    .await
                    .with_context(|| format!("opening stream {i}"))?
                    .into_inner();
                let m = st.message().await?.context("stream ended")?;
                let cert = m.svids.first().context("no SVID")?.x509_svid.clone();
                anyhow::Ok((i, st, cert))
            }),
    )
    .await
}

/// One HTTP/2 connection over the Unix socket.
async fn connect(sock: PathBuf) -> anyhow::Result<Client> {
    let ch = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(ch))
}

/// `n` connections, dialled 64 at a time.
async fn connect_many(sock: &Path, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(64);
        let set =
            futures::future::try_join_all((0..batch).map(|_| connect(sock.to_path_buf()))).await?;
        out.extend(set);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Call {
    Svid,
    Bundles,
}

/// Open the stream, read its first message, drop it.
async fn call(c: &mut Client, what: Call) -> anyhow::Result<()> {
    match what {
        Call::Svid => {
            let mut st = c
                .fetch_x509svid(with_header(X509svidRequest {}))
                .await?
                .into_inner();
            let m = st.message().await?.context("stream ended")?;
            anyhow::ensure!(!m.svids.is_empty(), "no SVID");
        }
        Call::Bundles => {
            let mut st = c
                .fetch_x509_bundles(with_header(X509BundlesRequest {}))
                .await?
                .into_inner();
            let m = st.message().await?.context("stream ended")?;
            anyhow::ensure!(!m.bundles.is_empty(), "no bundle");
        }
    }
    Ok(())
}

struct Stats {
    lat: Vec<Duration>,
    secs: f64,
    agent_cpu: f64,
    client_cpu: f64,
}

impl Stats {
    fn print(&self, what: &str) {
        let n = self.lat.len() as f64;
        println!(
            "   {what}: {} calls, {:.0}/s; p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; CPU per call: agent {:.0} us, client {:.0} us",
            self.lat.len(),
            n / self.secs,
            ms(pct(&self.lat, 0.5)),
            ms(pct(&self.lat, 0.9)),
            ms(pct(&self.lat, 0.99)),
            ms(self.lat.last().copied().unwrap_or_default()),
            self.agent_cpu / n * 1e6,
            self.client_cpu / n * 1e6,
        );
    }
}

/// Open loop: every client calls `what` on a fixed schedule so that all of
/// them together make `rate` calls per second (phases spread evenly). Latency
/// counts from the moment the call starts: tokio's timer fires up to ~1 ms
/// after the scheduled time, which would otherwise dominate the figure.
async fn open_loop(
    clients: &[Client],
    what: Call,
    rate: f64,
    dur: Duration,
    agent_pid: u32,
) -> anyhow::Result<Stats> {
    let n = clients.len().max(1);
    let every = Duration::from_secs_f64(n as f64 / rate.max(1.0));
    measure(clients, agent_pid, move |i, mut c, t| async move {
        let deadline = t + dur;
        let mut next = t + every.mul_f64(i as f64 / n as f64);
        let mut lats = Vec::new();
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            let start = Instant::now();
            call(&mut c, what).await?;
            lats.push(start.elapsed());
            next += every;
        }
        Ok(lats)
    })
    .await
}

/// Every client calls `what` back to back for `dur`.
async fn closed_loop(
    clients: &[Client],
    what: Call,
    dur: Duration,
    agent_pid: u32,
) -> anyhow::Result<Stats> {
    measure(clients, agent_pid, move |_, mut c, t| async move {
        let deadline = t + dur;
        let mut lats = Vec::with_capacity(4096);
        while Instant::now() < deadline {
            let s = Instant::now();
            call(&mut c, what).await?;
            lats.push(s.elapsed());
        }
        Ok(lats)
    })
    .await
}

/// One task per client (`job(index, client, start)` returns its latencies);
/// the sorted latencies with the CPU both sides spent meanwhile.
async fn measure<F, Fut>(clients: &[Client], agent_pid: u32, job: F) -> anyhow::Result<Stats>
where
    F: Fn(usize, Client, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Duration>>> + Send + 'static,
{
    let cpu0 = cpu_seconds();
    let agent0 = process_cpu_seconds(agent_pid);
    let t = Instant::now();
    let handles: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| tokio::spawn(job(i, c, t)))
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await??);
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    Ok(Stats {
        lat,
        secs,
        agent_cpu: process_cpu_seconds(agent_pid) - agent0,
        client_cpu: cpu_seconds() - cpu0,
    })
}

/// VmRSS, VmHWM, threads and open descriptors of a process.
struct Mem {
    rss_kb: u64,
    hwm_kb: u64,
    /// Of VmRSS: anonymous (heap, stacks) and file-backed (the executable's
    /// mapped pages) memory.
    anon_kb: u64,
    file_kb: u64,
    threads: u64,
    fds: usize,
}

impl Mem {
    fn of(pid: u32) -> Mem {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Mem {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
            anon_kb: field("RssAnon:"),
            file_kb: field("RssFile:"),
            threads: field("Threads:"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0),
        }
    }

    fn print(&self, when: &str) {
        println!(
            "   {when}: VmRSS {:.1} MB (anon {:.1}, file {:.1}), VmHWM {:.1} MB ({} threads, {} fds)",
            self.rss_kb as f64 / 1024.0,
            self.anon_kb as f64 / 1024.0,
            self.file_kb as f64 / 1024.0,
            self.hwm_kb as f64 / 1024.0,
            self.threads,
            self.fds
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile of sorted durations.
fn pct(v: &[Duration], p: f64) -> Duration {
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Raise the soft RLIMIT_NOFILE to the hard one; the resulting soft limit.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill / read the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    r.rlim_cur
}
