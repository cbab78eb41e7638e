//! `herald`: run Herald (or only its relay, or only projection workers),
//! migrate its database, mint a token, export and verify the event log, or
//! replay read models from it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::auth::JwtKeys;
use api::background::Background;
use api::config::{
    AuditCommand, Cli, Command, DatabaseArgs, DeadLetterArgs, EventsCommand, ExportArgs, NatsArgs,
    ProjectArgs, RelayArgs, ReplayArgs, UpArgs, VerifyArgs,
};
use api::limits::RateLimits;
use api::provider::PaymentProvider;
use api::{db, AppState, Surface};
use clap::Parser;
use commands::WriteSide;
use domain::values::{Actor, Role};
use herald_nats::chain::{self, Checkpoint, Verification};
use herald_nats::Topology;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use projections::Projection;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

/// mimalloc instead of the system allocator: under load glibc's malloc and
/// free took a quarter of Herald's CPU (see BENCHMARKS.md, the profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    init_logs();
    let result = match Cli::parse().command {
        Command::Up(args) => up(*args).await,
        Command::Relay(args) => relay(args).await,
        Command::Project(args) => project(args).await,
        Command::DeadLetters(args) => dead_letters(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Events(EventsCommand::Export(args)) => export(args).await,
        Command::Audit(AuditCommand::Verify(args)) => verify(args).await,
        Command::Audit(AuditCommand::Checkpoint(args)) => checkpoint(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Token(args) => JwtKeys::new(&args.jwt_secret)
            .map(|keys| println!("{}", keys.mint(Actor::new(args.sub, args.role), *args.ttl)))
            .map_err(BoxError::from),
    };
    match result {
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
        .with_writer(std::io::stderr)
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

async fn migrate(args: DatabaseArgs) -> Result<(), BoxError> {
    let pool = db::connect(&args).await?;
    db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

/// Entries read per query while exporting.
const EXPORT_BATCH: i64 = 1000;

/// Writes the log after `--after` as NDJSON to stdout.
async fn export(args: ExportArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args.database).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut position = args.after;
    loop {
        let entries = chain::entries_after(&pool, position, EXPORT_BATCH, None).await?;
        let Some(last) = entries.last().map(|e| e.entry.position) else {
            break;
        };
        for entry in &entries {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
        }
        position = last;
    }
    out.flush()?;
    Ok(())
}

/// A progress bar on stderr, or nothing when stderr is not a terminal.
fn progress_bar(prefix: &str, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
    ProgressBar::new(0)
        .with_style(style)
        .with_prefix(prefix.to_owned())
}

/// Verifies the chains with a progress bar.
async fn verified(pool: &PgPool, expect: Option<Checkpoint>) -> Result<Verification, BoxError> {
    let bar = progress_bar(
        "verify",
        "{prefix} [{bar:30}] {pos}/{len} entries, {rate}, ETA {eta}",
    );
    let started = Instant::now();
    let verification = chain::verify(pool, expect, |checked, total| {
        bar.set_length(total as u64);
        bar.set_position(checked as u64);
    })
    .await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "verified {} entries in {elapsed:.2}s ({:.0} entries/s)",
        verification.events_checked,
        verification.events_checked as f64 / elapsed.max(1e-9)
    );
    Ok(verification)
}

/// Prints the verification as JSON; fails when the log was tampered with.
async fn verify(args: VerifyArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args.database).await?;
    let verification = verified(&pool, args.expect).await?;
    println!("{}", serde_json::to_string(&verification)?);
    match verification.first_bad_position {
        None => Ok(()),
        Some(position) => Err(format!(
            "the log is not intact at position {position}: {}",
            verification.reason.unwrap_or_default()
        )
        .into()),
    }
}

/// Prints the head of a verified chain as `<position>:<hash>`.
async fn checkpoint(args: DatabaseArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args).await?;
    let verification = verified(&pool, None).await?;
    if let Some(position) = verification.first_bad_position {
        return Err(format!(
            "the log is not intact at position {position}, so it has no head to keep: {}",
            verification.reason.unwrap_or_default()
        )
        .into());
    }
    match verification.head {
        Some(head) => {
            println!("{head}");
            Ok(())
        }
        None => Err("the log is empty: there is no head to keep yet".into()),
    }
}

/// Replays the chosen projections one after another, with a progress bar each.
async fn replay(args: ReplayArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args.database).await?;
    let chosen = if args.projections.is_empty() {
        Projection::ALL.to_vec()
    } else {
        args.projections
    };
    for projection in chosen {
        let bar = progress_bar(
            projection.name(),
            "{prefix:>8} [{bar:30}] {pos}/{len} events, {rate}, ETA {eta}",
        );
        let report = projections::replay(&pool, projection, &|at, target| {
            bar.set_length(target.max(0) as u64);
            bar.set_position(at.max(0) as u64);
        })
        .await?;
        bar.finish_and_clear();
        println!(
            "{projection}: {} entries in {:.2}s ({:.0} events/s), swapped in at position {}",
            report.entries,
            report.elapsed.as_secs_f64(),
            report.rate(),
            report.position
        );
    }
    Ok(())
}

/// Lists dead letters as JSON lines, or retries them.
async fn dead_letters(args: DeadLetterArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args.database).await?;
    let chosen: Vec<Projection> = args
        .projection
        .map_or(Projection::ALL.to_vec(), |p| vec![p]);
    if args.retry {
        for projection in chosen {
            let (applied, failing) = projections::retry_dead_letters(&pool, projection).await?;
            println!("{projection}: {applied} applied, {failing} still failing");
        }
        return Ok(());
    }
    for letter in projections::dead_letters(&pool).await? {
        if chosen.iter().any(|p| p.name() == letter.projection) {
            println!("{}", serde_json::to_string(&letter)?);
        }
    }
    Ok(())
}

/// Everything in one process: API, relay, every projection worker.
async fn up(args: UpArgs) -> Result<(), BoxError> {
    let keys = jwt_keys(&args)?;
    let webhook_secret =
        api::routes::webhooks::WebhookSecret::from_config(args.webhook_secret.clone(), args.dev)?;
    let pool = migrated_pool(&args.database).await?;
    let write = Arc::new(WriteSide::new(pool.clone()));
    let (client, topology) = nats(&args.nats).await?;
    // Bound first, so that the default public URL names the actual port.
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    let public_url = args
        .public_url
        .as_ref()
        .map_or_else(|| format!("http://{address}"), ToString::to_string);
    let provider =
        PaymentProvider::from_config(&args.provider, args.dev, &public_url, &webhook_secret)?;
    let gateway = provider.gateway;
    let mut background = Background::default();
    background.announce_commits(write.clone());
    let relay = background.relay(&pool, &client, &topology);
    background.workers(&pool, &client, &topology, &Projection::ALL);
    background.process_manager(&write, &gateway, &client, &topology);
    let (live, hub) = api::live::LiveHub::new(
        pool.clone(),
        client.clone(),
        topology.clone(),
        api::live::LiveConfig::default(),
    );
    background.spawn(|stop| hub.run(stop));

    tracing::info!(%address, public_url, "herald is listening");
    let state = AppState {
        write,
        keys,
        gateway,
        webhook_secret,
        sandbox: provider.sandbox,
        live: Some(live.clone()),
    };
    let surface = Surface {
        nats: Some(client),
        relay: Some(relay),
        limits: RateLimits::new(&args.limits, state.keys.clone()).map(Arc::new),
        cors_origins: args.cors_origins,
    };
    // Sockets and streams end first: a graceful shutdown waits for open
    // responses, and an SSE stream never ends by itself.
    let shutdown = async move {
        api::shutdown_signal().await;
        live.close();
    };
    api::serve(listener, api::router_with(state, surface), shutdown).await?;
    background.drain().await;
    Ok(())
}

/// Only the relay.
async fn relay(args: RelayArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args.database).await?;
    let (client, topology) = nats(&args.nats).await?;
    let mut background = Background::default();
    background.relay(&pool, &client, &topology);
    api::shutdown_signal().await;
    background.drain().await;
    Ok(())
}

/// Only projection workers.
async fn project(args: ProjectArgs) -> Result<(), BoxError> {
    let pool = migrated_pool(&args.database).await?;
    let chosen = if args.projections.is_empty() {
        Projection::ALL.to_vec()
    } else {
        args.projections
    };
    let (client, topology) = nats(&args.nats).await?;
    let mut background = Background::default();
    background.workers(&pool, &client, &topology, &chosen);
    api::shutdown_signal().await;
    background.drain().await;
    Ok(())
}

/// A NATS client (connecting in the background if NATS is away) and the names
/// of the configured deployment.
async fn nats(args: &NatsArgs) -> Result<(async_nats::Client, Topology), BoxError> {
    let client = herald_nats::connect(&args.nats_url).await?;
    Ok((client, Topology::new(&args.nats_prefix)))
}

async fn migrated_pool(args: &DatabaseArgs) -> Result<PgPool, BoxError> {
    let pool = db::connect(args).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// The configured signing keys, or in `--dev` mode without a secret, ephemeral
/// ones with a ready token printed for every role.
fn jwt_keys(args: &UpArgs) -> Result<JwtKeys, BoxError> {
    match (&args.jwt_secret, args.dev) {
        (Some(secret), _) => Ok(JwtKeys::new(secret)?),
        (None, false) => Err("HERALD_JWT_SECRET is required (at least 32 bytes); \
                              use `herald up --dev` to run with an ephemeral one"
            .into()),
        (None, true) => {
            let secret: [u8; 32] = rand::random();
            let keys = JwtKeys::new(&SecretString::from(hex::encode(secret)))?;
            println!("development mode: an ephemeral JWT secret signs these tokens (valid 24h):");
            for role in [Role::Patient, Role::Doctor, Role::Admin, Role::Auditor] {
                let actor = Actor::new(Uuid::new_v4(), role);
                let token = keys.mint(actor, Duration::from_secs(24 * 3600));
                println!("  {:<8} sub={} token={token}", role.as_str(), actor.user_id);
            }
            Ok(keys)
        }
    }
}
