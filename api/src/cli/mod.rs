//! The `herald` subcommands, one module each; `main.rs` only parses the
//! command line and runs the chosen one.

mod audit;
mod replay;
mod up;
mod workers;

use std::io::IsTerminal;
use std::sync::LazyLock;
use std::time::Instant;

use herald_nats::Topology;
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use projections::Projection;

use crate::auth::JwtKeys;
use crate::config::{AuditCommand, Cli, Command, DatabaseArgs, EventsCommand, NatsArgs, TokenArgs};
use crate::db;
use crate::dev::DevIdentity;
use domain::values::Actor;

/// A subcommand's failure, printed as `herald: <error>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the subcommand `cli` names.
pub async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Up(args) => up::up(*args).await,
        Command::Relay(args) => workers::relay(args).await,
        Command::Project(args) => workers::project(args).await,
        Command::DeadLetters(args) => replay::dead_letters(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Events(EventsCommand::Export(args)) => audit::export(args).await,
        Command::Events(EventsCommand::Import(args)) => audit::import(args).await,
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(args).await,
        Command::Audit(AuditCommand::Checkpoint(args)) => audit::checkpoint(args).await,
        Command::Replay(args) => replay::replay(args).await,
        Command::Token(args) => token(args).await,
    }
}

/// Mints a token with the configured secret or, without one, with the secret
/// `herald up --dev` keeps in the database.
async fn token(args: TokenArgs) -> Result<(), BoxError> {
    let keys = match &args.jwt_secret {
        Some(secret) => JwtKeys::new(secret)?,
        None => {
            let pool = db::existing_pool(&args.database).await?;
            let dev = DevIdentity::load(&pool).await?.ok_or(
                "HERALD_JWT_SECRET is not set, and the database named by HERALD_DATABASE_URL \
                 holds no development secret (`herald up --dev` keeps one there)",
            )?;
            JwtKeys::new(&dev.jwt_secret)?
        }
    };
    println!("{}", keys.mint(Actor::new(args.sub, args.role), *args.ttl));
    Ok(())
}

async fn migrate(args: DatabaseArgs) -> Result<(), BoxError> {
    db::migrated_pool(&args).await?;
    println!("migrations applied");
    Ok(())
}

/// A progress bar on stderr, or nothing when stderr is not a terminal.
pub(crate) fn progress_bar(prefix: &str, template: &str) -> ProgressBar {
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
    BARS.add(
        ProgressBar::new(0)
            .with_style(style)
            .with_prefix(prefix.to_owned()),
    )
}

/// The progress bars showing on the terminal, drawn together so that a log
/// line written meanwhile goes above them instead of over them.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Where `herald` logs: stderr, above any progress bar showing there.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BARS.suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `<n> entries in <s>s (<rate> entries/s)`: what a long command got through.
pub(crate) fn took(entries: i64, started: Instant) -> String {
    let elapsed = started.elapsed().as_secs_f64();
    format!(
        "{entries} entries in {elapsed:.2}s ({:.0} entries/s)",
        entries as f64 / elapsed.max(1e-9)
    )
}

/// A NATS client (connecting in the background if NATS is away) and the names
/// of the configured deployment.
pub(crate) async fn nats(args: &NatsArgs) -> Result<(async_nats::Client, Topology), BoxError> {
    let client = herald_nats::connect(&args.nats_url).await?;
    Ok((client, Topology::new(&args.nats_prefix)))
}

/// The projections named on the command line, or all of them when none is.
pub(crate) fn chosen(named: Vec<Projection>) -> Vec<Projection> {
    if named.is_empty() {
        Projection::ALL.to_vec()
    } else {
        named
    }
}
