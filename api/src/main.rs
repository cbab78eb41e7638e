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
    init_logs();
    match api::cli::run(api::config::Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: JSON lines (one object per event, with the request and
/// correlation ids of the spans it happened in) unless stderr is a terminal or
/// `HERALD_LOG_FORMAT=text`.
fn init_logs() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let json = match std::env::var("HERALD_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(|| api::cli::LogWriter)
        .with_env_filter(filter);
    if json {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        logs.init();
    }
}
