//! `herald`: run Herald (or only its relay, or only projection workers),
//! migrate its database, mint a token, export and verify the event log, or
//! replay read models from it. Each subcommand lives in `api::cli`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: under load glibc's malloc and
/// free took a quarter of Herald's CPU (see BENCHMARKS.md, the profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = api::config::Cli::parse();
    let telemetry = match api::telemetry::init(&cli.tracing) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("herald: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = api::cli::run(cli).await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err}");
            ExitCode::FAILURE
        }
    }
}
