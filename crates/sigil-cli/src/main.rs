//! The `sigil` binary. Exit codes: see `sigil --help` and EXIT_CODES.md.

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the auth service allocates on every
/// request from several threads, and glibc's arena locks showed up as futex
/// waits and a fifth of its CPU in the renewal benchmark (benches/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = sigil_cli::cli::Cli::parse();
    sigil_cli::init_tracing(cli.is_server());
    // One TLS backend for the whole process (aws-lc-rs); an error only means a
    // provider is already installed, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match sigil_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our stdout went away (`| head`): nothing left to say.
        Err(e) if sigil_cli::error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sigil_cli::error::render(&e));
            ExitCode::from(sigil_cli::error::exit_code(&e))
        }
    }
}
