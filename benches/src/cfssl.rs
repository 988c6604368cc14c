//! The peer anchor run in the same benchmark (../shared/BENCHMARKS.md): Cloudflare
//! cfssl signing P-256 CSRs over plain HTTP (no TLS, storage or audit), driven by
//! `wrk` with 16 connections. Our figures are reported as ratios against it, so
//! the machine's noise at the time cancels out. Needs `cfssl`, `wrk` and
//! `openssl` on PATH (Debian: `apt-get install golang-cfssl wrk`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, process_cpu_seconds};

/// What one anchor run measured.
#[derive(Debug, Clone, Copy)]
pub struct CfsslAnchor {
    pub signs_per_sec: f64,
    /// CPU of the `cfssl serve` process only, per signature.
    pub cpu_us_per_sign: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Whether the anchor's programs are installed.
pub fn available() -> bool {
    ["cfssl", "wrk", "openssl"].iter().all(|p| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Start `cfssl serve`, load it for `secs` seconds, stop it.
pub fn run(secs: u64) -> anyhow::Result<CfsslAnchor> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(
        d.join("ca-csr.json"),
        r#"{"CN":"bench CA","key":{"algo":"ecdsa","size":256}}"#,
    )?;
    let ca = run_ok(
        Command::new("cfssl")
            .args(["gencert", "-initca"])
            .arg(d.join("ca-csr.json")),
    )?;
    let ca: serde_json::Value = serde_json::from_slice(&ca).context("cfssl gencert output")?;
    let field = |k: &str| {
        ca[k]
            .as_str()
            .map(str::to_owned)
            .context("cfssl gencert: no {k}")
    };
    std::fs::write(d.join("ca.pem"), field("cert")?)?;
    std::fs::write(d.join("ca-key.pem"), field("key")?)?;
    std::fs::write(
        d.join("config.json"),
        r#"{"signing":{"default":{"expiry":"1h","usages":["digital signature","client auth","server auth"]}}}"#,
    )?;
    run_ok(Command::new("openssl").current_dir(d).args([
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "leaf.key",
    ]))?;
    run_ok(Command::new("openssl").current_dir(d).args([
        "req",
        "-new",
        "-key",
        "leaf.key",
        "-subj",
        "/CN=bench",
        "-addext",
        "subjectAltName=URI:spiffe://example.test/bench",
        "-out",
        "leaf.csr",
    ]))?;
    let csr = std::fs::read_to_string(d.join("leaf.csr"))?;
    std::fs::write(
        d.join("body.json"),
        serde_json::json!({ "certificate_request": csr }).to_string(),
    )?;
    std::fs::write(
        d.join("post.lua"),
        "wrk.method=\"POST\"\nlocal f=io.open(\"body.json\",\"r\"); wrk.body=f:read(\"*a\"); f:close()\nwrk.headers[\"Content-Type\"]=\"application/json\"\n",
    )?;
    let port = free_port()?;
    let mut server = Command::new("cfssl")
        .current_dir(d)
        .args([
            "serve",
            "-ca",
            "ca.pem",
            "-ca-key",
            "ca-key.pem",
            "-config",
            "config.json",
        ])
        .args(["-address", "127.0.0.1", "-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting cfssl serve")?;
    let result = (|| {
        wait_listening(port, Duration::from_secs(10))?;
        let cpu0 = process_cpu_seconds(server.id());
        let out = run_ok(
            Command::new("wrk")
                .current_dir(d)
                .args([
                    "-t2",
                    "-c16",
                    &format!("-d{secs}s"),
                    "--latency",
                    "-s",
                    "post.lua",
                ])
                .arg(format!("http://127.0.0.1:{port}/api/v1/cfssl/sign")),
        )?;
        let cpu = process_cpu_seconds(server.id()) - cpu0;
        parse_wrk(&String::from_utf8_lossy(&out), cpu)
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn wait_listening(port: u16, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > limit {
            bail!("cfssl serve did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `wrk --latency` output: requests in total, requests/s, the 50 % and 99 %
/// latencies; errors (non-2xx answers) make the anchor invalid.
fn parse_wrk(out: &str, cpu_seconds: f64) -> anyhow::Result<CfsslAnchor> {
    if out.contains("Non-2xx") {
        bail!("cfssl answered errors:\n{out}");
    }
    let word_before = |marker: &str| {
        out.lines()
            .find(|l| l.contains(marker))
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
    };
    let total: f64 = word_before("requests in")
        .and_then(|w| w.parse().ok())
        .context("wrk: no request count")?;
    let value_after = |label: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(label))
            .map(str::trim)
            .map(str::to_owned)
    };
    let rate: f64 = value_after("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("wrk: no Requests/sec")?;
    let ms = |label: &str| value_after(label).and_then(|v| duration_ms(&v));
    Ok(CfsslAnchor {
        signs_per_sec: rate,
        cpu_us_per_sign: cpu_seconds / total * 1e6,
        p50_ms: ms("50%").unwrap_or(f64::NAN),
        p99_ms: ms("99%").unwrap_or(f64::NAN),
    })
}

/// wrk prints latencies as `812.00us`, `2.31ms` or `1.02s`.
fn duration_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 5s test @ http://127.0.0.1:1/api/v1/cfssl/sign\n  2 threads and 16 connections\n  Latency Distribution\n     50%    2.31ms\n     75%    3.00ms\n     90%    5.00ms\n     99%   38.50ms\n  31000 requests in 5.00s, 40.00MB read\nRequests/sec:   6200.00\nTransfer/sec:      8.00MB\n";
        let a = parse_wrk(out, 9.0).expect("parsed");
        assert_eq!(a.signs_per_sec, 6200.0);
        assert!((a.cpu_us_per_sign - 9.0 / 31000.0 * 1e6).abs() < 1e-6);
        assert_eq!(a.p50_ms, 2.31);
        assert_eq!(a.p99_ms, 38.5);
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert_eq!(duration_ms("1.5s"), Some(1500.0));
        assert!(parse_wrk("Non-2xx or 3xx responses: 5\n", 1.0).is_err());
    }
}
