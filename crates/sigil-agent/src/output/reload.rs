//! `reload_command`: every output type takes one (argv, no shell), run after
//! each rewrite of its files.

/// Run `reload_command` (if any) after an output's files were rewritten, so the
/// program reading them (sshd, PostgreSQL, nginx) picks them up. A failure is
/// logged, not fatal: the files are written, and the next rewrite tries again.
pub async fn run(cmd: &[String]) {
    let Some((prog, args)) = cmd.split_first() else {
        return;
    };
    let run = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(30), run).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(command = ?cmd, "reload_command ran");
        }
        Ok(Ok(out)) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).chars().take(500).collect::<String>(),
                "reload_command failed");
        }
        Ok(Err(e)) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, error = %e, "reload_command could not be started");
        }
        Err(_) => {
            metrics::counter!("sigil_agent_reload_failures_total").increment(1);
            tracing::warn!(command = ?cmd, "reload_command timed out after 30s");
        }
    }
}
