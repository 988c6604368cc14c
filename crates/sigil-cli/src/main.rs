//! The `sigil` binary. Exit codes: see `sigil --help` and EXIT_CODES.md.

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the auth service allocates on every
/// request from several threads, and glibc's arena locks showed up as futex
/// waits and a fifth of its CPU in the renewal benchmark (benches/README.md).
/// Built `no_thp`: it does not ask for transparent huge pages, which made
/// every touched 2 MiB region resident whole (+24 MB in the agent with 1,000
/// workloads) and gave the auth service nothing measurable.
/// The `system-alloc` feature keeps glibc malloc, for heap profilers
/// (heaptrack, valgrind) that interpose malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = sigil_cli::cli::Cli::parse();
    if cli.is_agent() {
        // Before the runtime's threads allocate (see the function).
        sigil_agent::disable_transparent_huge_pages();
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: sigil_cli::cli::Cli) -> ExitCode {
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
