//! `sigil proxy`: an identity-aware mTLS reverse proxy for HTTP apps. It
//! joins as a bot (its own agent), answers for each `app`'s `public_addr`,
//! authorises every request against the caller's current roles and locks
//! (the auth service decides, see sigil-auth's `app_access`), and forwards
//! it with a signed identity JWT (`Sigil-Jwt-Assertion`).

mod access;
mod audit;
mod caller;
pub mod config;
mod headers;
mod server;
mod tls;
mod upstream;

use std::sync::Arc;

use anyhow::Context;

pub use config::ProxyConfig;

/// Run the proxy until SIGTERM/SIGINT (or its agent stops).
pub async fn run(cfg: ProxyConfig) -> anyhow::Result<()> {
    let id = tls::ServerIdentity::load(&cfg.tls_cert_file, &cfg.tls_key_file)?;
    let agent_cfg = sigil_agent::AgentConfig::load(&cfg.agent_config)
        .with_context(|| format!("agent_config: {}", cfg.agent_config.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen: binding {}", cfg.listen))?;
    let (client_tx, client_rx) = tokio::sync::watch::channel(None);
    let access = access::Access::new(client_rx);
    let auditor = audit::Auditor::new(cfg.audit.clone());
    let ctx = Arc::new(server::Ctx {
        cfg,
        access: access.clone(),
        audit: auditor.clone(),
    });
    tracing::info!(addr = %ctx.cfg.listen, "proxy listening");
    let follow = tokio::spawn(access.clone().follow());
    let flush = tokio::spawn(auditor.flush_loop(access));
    let result = tokio::select! {
        r = sigil_agent::run_with(agent_cfg, false, Some(client_tx)) => r,
        r = server::serve(ctx, listener, id) => r,
    };
    follow.abort();
    flush.abort();
    result
}
