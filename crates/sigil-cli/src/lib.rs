//! The `sigil` command: servers (`auth start`, `agent start`) and admin verbs.
//! `main.rs` only parses, sets up logging and maps errors to exit codes; all the
//! logic lives here so it can be tested.

pub mod admin;
pub mod ca_keys;
pub mod cli;
pub mod error;
pub mod files;
pub mod output;
pub mod servers;
pub mod ssh;

#[cfg(test)]
mod cli_tests;

use cli::{AgentCommand, AuthCommand, Cli, Command};
use tracing_subscriber::EnvFilter;

/// Logs go to stderr, filtered by `SIGIL_LOG` (e.g. `debug`, `sigil_auth=trace`);
/// the default is `info` for servers and `warn` for admin verbs, whose stdout and
/// stderr are for the user.
pub fn init_tracing(server: bool) {
    // tss_esapi logs every TPM context it closes at info.
    let default = if server {
        "info,tss_esapi=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("SIGIL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (tests) is harmless; ignore the error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Auth(AuthCommand::Start(args)) => servers::auth_start(g, args).await,
        Command::Auth(AuthCommand::Migrate(args)) => servers::auth_migrate(args).await,
        Command::Agent(AgentCommand::Start(args)) => servers::agent_start(g, args).await,
        Command::Proxy(crate::cli::ProxyCommand::Start(args)) => {
            let cfg = sigil_proxy::ProxyConfig::load(&args.config)
                .map_err(|e| crate::error::CliError::usage(format!("{e:#}")))?;
            sigil_proxy::run(cfg).await
        }
        Command::Create(args) => admin::resources::create(g, args).await,
        Command::Get(args) => admin::resources::get(g, args).await,
        Command::Rm(args) => admin::resources::rm(g, args).await,
        Command::Bots(cmd) => admin::bots::run(g, cmd).await,
        Command::Tokens(cmd) => admin::tokens::run(g, cmd).await,
        Command::Locks(cmd) => admin::locks::run(g, cmd).await,
        Command::Audit(cmd) => admin::audit::run(g, cmd).await,
        Command::WorkloadIdentity(cmd) => admin::workload_identity::run(g, cmd).await,
        Command::Status(args) => admin::status::run(g, args).await,
        Command::Ca(cmd) => admin::ca::run(g, cmd).await,
        Command::Ssh(cmd) => ssh::run(cmd),
        Command::Kube(cmd) => admin::kube::run(g, cmd).await,
        Command::Db(cmd) => admin::db::run(g, cmd).await,
        Command::Admin(cmd) => admin::web_login::run(g, cmd).await,
    }
}
