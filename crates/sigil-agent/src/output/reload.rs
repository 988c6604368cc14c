//! `reload_command`: every output type takes one (argv, no shell), run after
//! each rewrite of its files.

use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How long a reload may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How much of its stderr is logged.
const STDERR_LOGGED: usize = 500;

/// Run `reload_command` (if any) after an output's files were rewritten, so the
/// program reading them (sshd, PostgreSQL, nginx) picks them up. A failure is
/// logged, not fatal: the files are written, and the next rewrite tries again.
///
/// It waits for the command to exit, not for its output to close (a daemon it
/// starts may keep stderr open), and does not pass on the agent's `SIGIL_*`
/// variables (a join token may be among them).
pub async fn run(cmd: &[String]) {
    let Some((prog, args)) = cmd.split_first() else {
        return;
    };
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SIGIL_") {
            c.env_remove(k);
        }
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, error = %e, "reload_command could not be started");
            return;
        }
    };
    // Drained while it runs (a full pipe would block it); the start is kept.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child.stderr.take().map(|mut s| {
        let kept = kept.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = STDERR_LOGGED.saturating_sub(k.len());
                k.extend_from_slice(&buf[..n.min(room)]);
            }
        })
    });
    let status = tokio::time::timeout(TIMEOUT, child.wait()).await;
    // A child it left behind may hold the pipe open: wait for it only briefly.
    if let Some(r) = reader {
        let abort = r.abort_handle();
        if tokio::time::timeout(Duration::from_millis(200), r)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let stderr =
        String::from_utf8_lossy(&kept.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    match status {
        Ok(Ok(s)) if s.success() => tracing::info!(command = ?cmd, "reload_command ran"),
        Ok(Ok(s)) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, status = %s, stderr = %stderr, "reload_command failed");
        }
        Ok(Err(e)) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, error = %e, "waiting for reload_command failed");
        }
        Err(_) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, stderr = %stderr, "reload_command timed out after 30s; killed");
        }
    }
}
