//! Shared harness for the load generators in `benches/*.rs` (see README.md):
//! knobs from the environment, the `sigil` binary under test, free ports and
//! CPU accounting.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A numeric knob from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `SIGIL_BIN`, else `sigil` next to this benchmark in its own target dir
/// (`target/release/deps/workload_api-*` → `target/release/sigil`), else
/// `$CARGO_TARGET_DIR/release/sigil` or the workspace's `target/release/sigil`.
pub fn sigil_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SIGIL_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.exists(), "SIGIL_BIN={} not found", p.display());
        return Ok(p);
    }
    let mut tried = Vec::new();
    if let Some(release) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()))
    {
        tried.push(release.join("sigil"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    tried.push(target.join("release/sigil"));
    tried
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| {
            format!(
                "sigil not found at {tried:?}: run `cargo build --release -p sigil-cli` with the same CARGO_TARGET_DIR first, or set SIGIL_BIN"
            )
        })
}

/// User + system CPU seconds of another process, from /proc.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// User + system CPU seconds of this process (the load generator).
pub fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
