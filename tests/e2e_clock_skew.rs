//! Clock skew between agent and auth service (issue 15): the agent runs under
//! libfaketime with its wall clock 5 minutes ahead of the server's, or 5
//! minutes behind. It must join, renew, serve its outputs and report ready;
//! the certificates issued must be valid from both sides' clocks; and the
//! server must not take anything for a replay (no generation mismatch, no
//! lock).
//!
//! Only the wall clock moves (`FAKETIME_DONT_FAKE_MONOTONIC=1`): tokio's
//! timers run on CLOCK_MONOTONIC, which a real skewed machine does not shift.
//! Needs Debian's libfaketime (scripts/test installs it); another copy can be
//! named with SIGIL_TEST_LIBFAKETIME.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn libfaketime() -> PathBuf {
    let p = std::env::var_os("SIGIL_TEST_LIBFAKETIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LIBFAKETIME));
    assert!(
        p.exists(),
        "{} is missing: install Debian's libfaketime (scripts/test --deps-only does)",
        p.display()
    );
    p
}

/// `cmd` with its wall clock shifted by `offset` (libfaketime syntax, "+5m").
fn skewed(cmd: &mut Command, offset: &str) {
    cmd.env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        // The clock is read afresh on every call, not cached for 10 s.
        .env("FAKETIME_NO_CACHE", "1");
}

/// The skew really reaches the process: `date +%s` under it differs from
/// ours by about `secs`.
fn assert_skew_applies(offset: &str, secs: i64) {
    let mut c = Command::new("date");
    c.arg("+%s");
    skewed(&mut c, offset);
    let o = c.output().expect("run date");
    let theirs: i64 = stdout(&o).trim().parse().expect("date +%s");
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        (theirs - ours - secs).abs() <= 5,
        "libfaketime did not shift the clock by {secs} s (theirs {theirs}, ours {ours})"
    );
}

/// A long-running skewed agent renewing every second.
struct SkewedAgent {
    child: Child,
    diag: u16,
    log: PathBuf,
}

impl SkewedAgent {
    fn start(auth: &Auth, token: &str, dirs: &AgentDirs, offset: &str) -> SkewedAgent {
        let diag = free_port();
        let log = dirs.dir.path().join("agent.log");
        let mut c = dirs.command(auth, Some(token), false);
        c.args(["--renewal-interval", "1s"])
            .args(["--diag-addr", &format!("127.0.0.1:{diag}")])
            .env("SIGIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        skewed(&mut c, offset);
        let child = c.spawn().expect("start the agent");
        SkewedAgent { child, diag, log }
    }

    fn ready(&self) -> u16 {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{}/readyz", self.diag))
            .output()
            .expect("run curl");
        stdout(&o).trim().parse().unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SkewedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl verify` of the identity output's certificate against its CA
/// bundle, run with the wall clock shifted by `offset` ("+0" = the server's).
fn verify_at(out: &Path, offset: &str) -> std::process::Output {
    let mut c = Command::new("openssl");
    c.args(["verify", "-CAfile"])
        .arg(out.join("ca.crt"))
        .arg(out.join("tls.crt"));
    skewed(&mut c, offset);
    c.output().expect("run openssl")
}

fn joins_and_renews_with_the_agent_clock(offset: &str, secs: i64) {
    assert_skew_applies(offset, secs);
    let auth = Auth::start();
    let token = auth.bot("skewed", &["s"]);
    let dirs = AgentDirs::new();
    let agent = SkewedAgent::start(&auth, &token, &dirs, offset);
    let start = std::time::Instant::now();
    while !(dirs.storage.join("credential.json").exists()
        && dirs.generation() >= 3
        && agent.ready() == 200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "the agent at {offset} did not join, renew twice and report ready in 45 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fresh certificates are valid on both clocks: the agent's (and so a
    // peer sharing it) and the server's.
    for view in [offset, "+0"] {
        let v = verify_at(&dirs.out, view);
        assert!(
            v.status.success(),
            "the output certificate is not valid with the clock at {view}:\n{}\nagent log:\n{}",
            text(&v),
            agent.log()
        );
    }
    let log = agent.log();
    assert!(!log.contains("renewal failed"), "{log}");
    assert!(auth.audit("bot.generation_mismatch").is_empty(), "{log}");
    let locks = auth.ok(&["locks", "ls", "--format", "json"]);
    assert_eq!(locks.trim(), "[]", "{locks}");
    let inst = auth.instances();
    assert_eq!(inst.len(), 1, "{inst:?}");
    assert_eq!(inst[0]["spec"]["generation"], dirs.generation(), "{inst:?}");
}

#[test]
fn an_agent_five_minutes_ahead_joins_and_renews() {
    joins_and_renews_with_the_agent_clock("+5m", 300);
}

#[test]
fn an_agent_five_minutes_behind_joins_and_renews() {
    joins_and_renews_with_the_agent_clock("-5m", -300);
}
