//! Renewal throughput through the real gRPC mTLS path, audit persisted.
//!
//! Starts the real auth service (`target/release/sigil auth start`, SQLite in
//! a temp dir) as its own process, joins N bot instances,
//! then measures `Renew`:
//! - warm: each instance's mTLS connection is established before the clock
//!   starts (a renewal's identity is the certificate on its connection, so a
//!   connection carries one renewal per instance; rounds re-connect untimed);
//! - fresh: every renewal dials a new TCP + TLS 1.3 mutual-auth connection
//!   with the instance's latest certificate.
//!
//! Next to it, the raw P-256 signing rate of aws-lc-rs in the same run.
//!
//! `cargo build --release -p sigil-cli && cargo bench -p sigil-bench --bench renewal`
//! (env: INSTANCES, CONCURRENCY, ROUNDS, FRESH_SECS)

use sigil_bench::{
    Instance, admin_client, cpu_seconds, env, free_port, join, process_cpu_seconds, renew,
    run_workers, sigil_binary,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sigil_agent::client;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::*;
use tokio::sync::Mutex;

/// The same allocator as the `sigil` binary (the agent side of the load).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let instances = env("INSTANCES", 4000);
    let concurrency = env("CONCURRENCY", 64);
    let rounds = env("ROUNDS", 5);
    let fresh_secs = env("FRESH_SECS", 5);

    let raw1 = raw_sign_rate(1, Duration::from_secs(2));
    let raw2 = raw_sign_rate(2, Duration::from_secs(2));

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let sigil = sigil_binary()?;
    let log = std::fs::File::create(dir.path().join("auth.log"))?;
    let mut server = std::process::Command::new(&sigil)
        .args(["auth", "start", "--data-dir"])
        .arg(&data)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--public-listen",
            "127.0.0.1:0",
        ])
        .args(["--cluster-name", "bench.test"])
        .env("SIGIL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", sigil.display()))?;
    let server_pid = server.id();

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("load-client")
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = client_rt.block_on(async move {
        let sock = data.join("admin.sock");
        let start = Instant::now();
        while !sock.exists() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "auth service did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut admin = admin_client(sock).await?;
        let role = serde_json::json!({"kind":"role","version":"v1","metadata":{"name":"bench"},"spec":{"allow":{"logins":["bench"]}}});
        admin.create_resource(CreateResourceRequest { json: role.to_string(), upsert: false }).await?;
        let bot = admin
            .add_bot(AddBotRequest { name: "bench".into(), roles: vec!["bench".into()], ..Default::default() })
            .await?
            .into_inner();
        let addr = format!("127.0.0.1:{port}");
        let pins = vec![bot.ca_pin.clone()];

        // Join N instances (untimed set-up).
        let t = Instant::now();
        let mut tokens = vec![bot.token];
        while tokens.len() < instances {
            let r = admin
                .add_token(AddTokenRequest { bot: "bench".into(), ttl_seconds: 3600, ..Default::default() })
                .await?;
            tokens.push(r.into_inner().token);
        }
        let joined = futures::future::try_join_all(tokens.chunks(instances.div_ceil(concurrency)).map(|chunk| {
            let chunk = chunk.to_vec();
            let (addr, pins) = (addr.clone(), pins.clone());
            async move {
                let tls = client::tls_config(&pins, None)?;
                let mut c = AuthServiceClient::new(client::channel(&addr, tls)?);
                let mut out = Vec::new();
                for tok in chunk {
                    out.push(join(&mut c, &tok).await?);
                }
                anyhow::Ok(out)
            }
        }))
        .await?;
        let insts: Vec<Arc<Mutex<Instance>>> =
            joined.into_iter().flatten().map(|i| Arc::new(Mutex::new(i))).collect();
        eprintln!("joined {} instances in {:.1}s", insts.len(), t.elapsed().as_secs_f64());

        // Warm rounds.
        let mut warm = Vec::new();
        let mut warm_lat = Vec::new();
        let mut warm_cpu = Vec::new();
        let mut ping_rates = Vec::new();
        let mut ping_cpu = Vec::new();
        for round in 0..rounds {
            let mut clients = Vec::with_capacity(insts.len());
            for chunk in insts.chunks(256) {
                let mut set = Vec::new();
                for inst in chunk {
                    let i = inst.lock().await;
                    let tls = client::tls_config(&pins, Some(client::ClientCert { cert_pem: &i.cert_pem, key_pem: &i.key_pem }))?;
                    set.push(client::channel(&addr, tls)?);
                }
                // Connect now so the handshake is outside the timed part.
                for ch in &set {
                    let mut c = AuthServiceClient::new(ch.clone());
                    c.ping(PingRequest {}).await.context("warm-up ping")?;
                }
                clients.extend(set);
            }
            // Baseline in the same run: an empty RPC (Ping) over the same warm
            // connections, same concurrency — the transport's own ceiling.
            let pings = Arc::new(std::sync::Mutex::new(clients.clone()));
            let t = Instant::now();
            let ping_srv0 = process_cpu_seconds(server_pid);
            let n = run_workers(concurrency, {
                let pings = pings.clone();
                move || {
                    let pings = pings.clone();
                    async move {
                        let Some(ch) = pings.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                            return Ok(None);
                        };
                        let s = Instant::now();
                        AuthServiceClient::new(ch).ping(PingRequest {}).await?;
                        Ok(Some(s.elapsed()))
                    }
                }
            })
            .await?
            .len();
            ping_rates.push(n as f64 / t.elapsed().as_secs_f64());
            ping_cpu.push((process_cpu_seconds(server_pid) - ping_srv0) / n as f64 * 1e6);
            let work: Vec<(Arc<Mutex<Instance>>, tonic::transport::Channel)> =
                insts.iter().cloned().zip(clients).collect();
            let queue = Arc::new(std::sync::Mutex::new(work));
            // Markers for attaching a profiler to the timed part only.
            eprintln!("timed renewals: start");
            let t = Instant::now();
            let cpu0 = cpu_seconds();
            let srv0 = process_cpu_seconds(server_pid);
            let lats = run_workers(concurrency, {
                let queue = queue.clone();
                move || {
                    let queue = queue.clone();
                    async move {
                        let Some((inst, ch)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                            return Ok(None);
                        };
                        let s = Instant::now();
                        renew(AuthServiceClient::new(ch), &inst).await?;
                        Ok(Some(s.elapsed()))
                    }
                }
            })
            .await?;
            let secs = t.elapsed().as_secs_f64();
            eprintln!("timed renewals: end");
            let cpu = cpu_seconds() - cpu0;
            let srv = process_cpu_seconds(server_pid) - srv0;
            let rate = lats.len() as f64 / secs;
            let n = lats.len() as f64;
            eprintln!(
                "warm round {round}: {} renewals in {secs:.3}s = {rate:.0}/s; CPU per renewal: auth service {:.0} us, load generator {:.0} us",
                lats.len(),
                srv / n * 1e6,
                cpu / n * 1e6
            );
            warm_cpu.push((srv / n * 1e6, cpu / n * 1e6));
            warm.push(rate);
            warm_lat.extend(lats);
        }

        // Fresh connection per renewal, for FRESH_SECS.
        let deadline = Instant::now() + Duration::from_secs(fresh_secs as u64);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = Instant::now();
        let fresh_lat = run_workers(concurrency, {
            let insts = insts.clone();
            let (addr, pins) = (addr.clone(), pins.clone());
            move || {
                let insts = insts.clone();
                let (addr, pins, next) = (addr.clone(), pins.clone(), next.clone());
                async move {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % insts.len();
                    let inst = &insts[n];
                    let s = Instant::now();
                    let ch = {
                        let i = inst.lock().await;
                        let tls = client::tls_config(&pins, Some(client::ClientCert { cert_pem: &i.cert_pem, key_pem: &i.key_pem }))?;
                        client::channel(&addr, tls)?
                    };
                    renew(AuthServiceClient::new(ch), inst).await?;
                    Ok(Some(s.elapsed()))
                }
            }
        })
        .await?;
        let fresh = fresh_lat.len() as f64 / t.elapsed().as_secs_f64();

        let v = admin.verify_audit(VerifyAuditRequest::default()).await?.into_inner();
        anyhow::ensure!(v.intact, "audit chain broken after the run");
        Ok::<_, anyhow::Error>((warm, warm_lat, warm_cpu, ping_rates, ping_cpu, fresh, fresh_lat, v.count))
    });
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(server_pid as i32, libc::SIGTERM) };
    let _ = server.wait();
    let (
        mut warm,
        mut warm_lat,
        mut warm_cpu,
        mut ping_rates,
        mut ping_cpu,
        fresh,
        mut fresh_lat,
        audit_events,
    ) = report?;
    ping_cpu.sort_by(f64::total_cmp);
    // The anchor runs after our server stopped, on the same quiet-as-it-gets cores.
    let anchor = match env("CFSSL_SECS", 10) {
        0 => None,
        _ if !sigil_bench::cfssl::available() => {
            eprintln!(
                "cfssl anchor skipped: install cfssl, wrk and openssl (Debian: golang-cfssl wrk)"
            );
            None
        }
        secs => Some(sigil_bench::cfssl::run(secs as u64)?),
    };
    ping_rates.sort_by(f64::total_cmp);
    warm_cpu.sort_by(|a, b| a.0.total_cmp(&b.0));

    warm.sort_by(f64::total_cmp);
    warm_lat.sort();
    fresh_lat.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let warm_median = warm[warm.len() / 2];
    let ping_median = ping_rates
        .get(ping_rates.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("raw aws-lc-rs P-256 sign: 1 thread {raw1:.0}/s, 2 threads {raw2:.0}/s");
    let ping = ping_rates
        .get(ping_rates.len() / 2)
        .copied()
        .unwrap_or_default();
    let ping_us = ping_cpu
        .get(ping_cpu.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "baseline, empty RPC (Ping) on the same warm mTLS connections: median {ping:.0}/s; auth service CPU per Ping {ping_us:.0} us (the transport's floor)"
    );
    println!(
        "renewal, warm mTLS connections: median {warm_median:.0}/s over {} rounds (min {:.0}, max {:.0}); p50 {:.2} ms, p99 {:.2} ms; {:.0}% of the empty-RPC rate; raw 2-thread signing is {:.0}x the renewal rate",
        warm.len(),
        warm[0],
        warm[warm.len() - 1],
        ms(pct(&warm_lat, 0.5)),
        ms(pct(&warm_lat, 0.99)),
        warm_median / ping_median * 100.0,
        raw2 / warm_median
    );
    println!(
        "renewal, fresh mTLS connection each: {fresh:.0}/s; p50 {:.2} ms, p99 {:.2} ms",
        ms(pct(&fresh_lat, 0.5)),
        ms(pct(&fresh_lat, 0.99))
    );
    if let Some((srv, cli)) = warm_cpu.get(warm_cpu.len() / 2) {
        println!(
            "CPU per warm renewal (median round): auth service {srv:.0} us, load generator {cli:.0} us"
        );
    }
    println!("audit chain intact: {audit_events} events");
    if let Some(a) = anchor {
        println!(
            "anchor, cfssl over plain HTTP (same run): {:.0} signs/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} us of CPU per signature",
            a.signs_per_sec, a.p50_ms, a.p99_ms, a.cpu_us_per_sign
        );
        if let Some((srv, _)) = warm_cpu.get(warm_cpu.len() / 2) {
            println!(
                "ratio, auth CPU per warm renewal / cfssl CPU per signature: {:.2} (target <= 0.35); transport floor alone: {:.2}",
                srv / a.cpu_us_per_sign,
                ping_us / a.cpu_us_per_sign
            );
        }
        println!(
            "ratio, fresh-connection renewals/s / cfssl signatures/s: {:.2} (target >= 0.4)",
            fresh / a.signs_per_sec
        );
    }
    Ok(())
}

/// Raw ECDSA P-256 signatures per second with aws-lc-rs on `threads` threads.
fn raw_sign_rate(threads: usize, dur: Duration) -> f64 {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let Ok(doc) = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng) else {
        return 0.0;
    };
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()) else { return 0 };
                    let start = Instant::now();
                    let mut n = 0;
                    while start.elapsed() < dur {
                        for _ in 0..100 {
                            let _ = k.sign(&rng, b"a to-be-signed certificate of typical size ........................................");
                        }
                        n += 100;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / dur.as_secs_f64()
}
