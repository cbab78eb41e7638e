//! The `herald` command line: one typed struct per subcommand, every setting also
//! read from its `HERALD_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use domain::values::Role;
use herald_nats::log::chain::Checkpoint;
use secrecy::SecretString;
use uuid::Uuid;

/// Herald: the event-sourced backend of a care-at-home platform.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
pub struct Cli {
    /// Where traces go.
    #[command(flatten)]
    pub tracing: TracingArgs,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the spans of the pipeline are exported, for every subcommand.
#[derive(Debug, Args)]
pub struct TracingArgs {
    /// An OpenTelemetry collector's OTLP/HTTP endpoint, such as
    /// `http://localhost:4318` (spans go to `/v1/traces` under it, as JSON).
    /// Without one, no span is recorded or exported.
    #[arg(long, env = "HERALD_OTLP_ENDPOINT", global = true, value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<url::Url>,
}

/// The `herald` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Herald: migrate the database, then serve the API and run the relay
    /// and every projection worker in this one process.
    Up(Box<UpArgs>),
    /// Run only the relay (the active one holds a Postgres lock; others stand by).
    Relay(RelayArgs),
    /// Run only projection workers: the named ones, or all.
    Project(ProjectArgs),
    /// List the entries projections set aside as dead letters, or retry them.
    DeadLetters(DeadLetterArgs),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Read the event log, for offline audit.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Check the log's hash chains, or print their head to keep outside the database.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rebuild read models from the log into shadow tables and swap them in,
    /// while reads go on being served.
    Replay(ReplayArgs),
    /// Mint a signed JWT for a user and role.
    Token(TokenArgs),
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. `herald up` and `herald migrate` create the
    /// database when it does not exist; every other subcommand refuses it.
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/herald",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most connections the pool opens; reads keep up to half as many again
    /// of their own (`db::Readers`).
    #[arg(long, env = "HERALD_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,
}

/// Settings of `herald up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// NATS.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Address the HTTP server listens on: `host:port`, the host a name or an IP.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// HS256 secret that signs and checks JWTs; at least 32 bytes.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true, value_parser = secret)]
    pub jwt_secret: Option<SecretString>,

    /// Secrets that signed tokens before the current one, comma-separated:
    /// their tokens are still accepted until they expire, while new ones are
    /// signed with `HERALD_JWT_SECRET`. Each at least 32 bytes.
    #[arg(
        long,
        env = "HERALD_JWT_PREVIOUS_SECRETS",
        hide_env_values = true,
        value_parser = secret,
        value_delimiter = ','
    )]
    pub jwt_previous_secrets: Vec<SecretString>,

    /// Secret the payment provider signs its webhooks with; at least 16 bytes.
    /// Required outside `--dev`, which makes one and keeps it in the database.
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true, value_parser = secret)]
    pub webhook_secret: Option<SecretString>,

    /// The URL Herald is reached at from outside: the base of the sandbox
    /// provider's confirmation pages and the address it delivers webhooks to.
    /// Defaults to `http://<HERALD_LISTEN>`.
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<url::Url>,

    /// Development mode: without a JWT or webhook secret, make one up and keep
    /// it in the database; print a ready token for a demo user of every role
    /// (the same users after a restart); serve the sandbox payment provider;
    /// let webhooks be at private addresses, such as the developer's own.
    #[arg(long)]
    pub dev: bool,

    /// The payment provider.
    #[command(flatten)]
    pub provider: ProviderArgs,

    /// Token buckets of the rate limits.
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,

    /// Limits on what one connection may take.
    #[command(flatten)]
    pub connections: crate::server::ConnectionArgs,

    /// Live sockets (`/api/v1/ws`) one user may hold open in this process.
    #[arg(long, env = "HERALD_LIVE_SOCKETS_PER_USER", default_value_t = 16)]
    pub live_sockets_per_user: usize,

    /// How long someone stays online after the last heartbeat of the Herald
    /// instance they are connected to (heartbeats come every third of it): a
    /// dead instance's users go offline within it. At least a second.
    #[arg(long, env = "HERALD_PRESENCE_TTL", default_value = "30s", value_parser = presence_ttl)]
    pub presence_ttl: std::time::Duration,

    /// Browser origins allowed to call the API (comma-separated); none by default.
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<axum::http::HeaderValue>,

    /// Notifications.
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,

    /// Notifications by e-mail.
    #[command(flatten)]
    pub email: crate::email::EmailArgs,

    /// Attachments.
    #[command(flatten)]
    pub attachments: crate::attachments::AttachmentArgs,
}

/// Which payment provider Herald pays through.
#[derive(Debug, Args)]
pub struct ProviderArgs {
    /// Serve the built-in sandbox payment provider under `/sandbox` and pay
    /// through it. For development and tests only: no real money moves.
    /// `--dev` switches it on.
    #[arg(long, env = "HERALD_SANDBOX")]
    pub sandbox: bool,

    /// Base URL of the payment provider's API. Defaults to Herald's own public
    /// URL when the sandbox is served.
    #[arg(long, env = "HERALD_PROVIDER_URL")]
    pub provider_url: Option<url::Url>,

    /// The shop's id at the provider. With the sandbox and no credentials,
    /// Herald makes ephemeral ones.
    #[arg(long, env = "HERALD_PROVIDER_SHOP_ID")]
    pub provider_shop_id: Option<String>,

    /// The secret key the provider issued to the shop.
    #[arg(long, env = "HERALD_PROVIDER_SECRET_KEY", hide_env_values = true, value_parser = secret)]
    pub provider_secret_key: Option<SecretString>,
}

/// Where NATS is and which deployment's stream to use.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "HERALD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Names the JetStream stream and starts every subject, so that several
    /// deployments can share one NATS.
    #[arg(long, env = "HERALD_NATS_PREFIX", default_value = "herald", value_parser = prefix)]
    pub nats_prefix: String,
}

/// Settings of `herald relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// NATS.
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// Settings of `herald project`.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// NATS.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Projections to run (chats, bookings, payments, summary, notifications, activity); all when none.
    pub projections: Vec<projections::Projection>,
}

/// Settings of `herald dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Apply them again; those that now apply are removed.
    #[arg(long)]
    pub retry: bool,

    /// Only this follower's: a projection (chats, bookings, payments, summary,
    /// notifications, activity), the payment process manager (payment-process), the
    /// reminders of unread messages (chat-reminders) or the maker of
    /// thumbnails (attachment-thumbnails).
    pub follower: Option<String>,
}

/// `herald events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Write the log as NDJSON to stdout, one entry a line, in position order,
    /// with the fields of `GET /api/v1/events`.
    Export(ExportArgs),
    /// Restore an export into an empty database (made by `herald migrate`),
    /// checking both hash chains on the way in; a file that breaks anywhere
    /// is refused with its position and nothing is written. Prints the
    /// restored log's head as `<position>:<hash>`.
    Import(ImportArgs),
}

/// Settings of `herald events export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Start after this position.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
}

/// Settings of `herald events import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The export to read; standard input when absent.
    pub file: Option<PathBuf>,

    /// A head printed by `herald audit checkpoint` before the export: the
    /// restored chain must pass through it, so a file cut short of it is
    /// refused.
    #[arg(long)]
    pub expect: Option<Checkpoint>,
}

/// `herald audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chains over the whole log; exits non-zero, naming
    /// the first bad position, when anything was tampered with.
    Verify(VerifyArgs),
    /// Verify, then print the chain's head as `<position>:<hash>`: keep it
    /// outside the database and pass it to `verify --expect` later.
    Checkpoint(DatabaseArgs),
}

/// Settings of `herald audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// A head printed earlier by `herald audit checkpoint`, `<position>:<hash>`:
    /// the chain must still pass through it, so the log was neither rewritten
    /// nor cut short before it.
    #[arg(long)]
    pub expect: Option<Checkpoint>,
}

/// Settings of `herald replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Projections to rebuild (chats, bookings, payments, summary, notifications, activity); all when none.
    pub projections: Vec<projections::Projection>,

    /// Rebuilds what the last `herald replay` had not swapped in when it was
    /// interrupted, instead of named projections.
    #[arg(long, conflicts_with = "projections")]
    pub resume: bool,
}

/// Settings of `herald token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user the token speaks for.
    #[arg(long, value_parser = user_id)]
    pub sub: Uuid,

    /// patient, doctor, admin or auditor.
    #[arg(long)]
    pub role: Role,

    /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h")]
    pub ttl: humantime::Duration,

    /// The secret Herald checks tokens with; when not set, the one
    /// `herald up --dev` keeps in the database.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true, value_parser = secret)]
    pub jwt_secret: Option<SecretString>,

    /// Where `herald up --dev` keeps its secret, when no secret is given.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// A user id; what a mistyped one should be is said plainly.
fn user_id(value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value)
        .map_err(|_| "must be a UUID, such as 0190a5b4-8f3e-7c2a-9d41-6b2f0e8c1a57".to_owned())
}

/// A secret setting, kept from being printed.
pub(crate) fn secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

/// A prefix must be one subject token: letters, digits, `-` and `_`.
fn prefix(value: &str) -> Result<String, String> {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(value.to_owned())
    } else {
        Err("must be letters, digits, `-` or `_`".to_owned())
    }
}

/// An OTLP/HTTP endpoint: an `http` or `https` URL.
fn otlp_endpoint(value: &str) -> Result<url::Url, String> {
    let refused = |why: String| {
        format!("HERALD_OTLP_ENDPOINT must be an http:// or https:// URL such as http://localhost:4318 ({why})")
    };
    let url = url::Url::parse(value).map_err(|err| refused(err.to_string()))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        scheme => Err(refused(format!("not {scheme}://"))),
    }
}

/// A presence time-to-live: a duration of at least a second, since NATS
/// reads a `max_age` of zero as "forever".
fn presence_ttl(value: &str) -> Result<std::time::Duration, String> {
    let ttl: std::time::Duration = value
        .parse::<humantime::Duration>()
        .map_err(|err| err.to_string())?
        .into();
    if ttl < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_ttl_is_a_duration_of_at_least_a_second() {
        assert_eq!(presence_ttl("30s"), Ok(std::time::Duration::from_secs(30)));
        assert_eq!(presence_ttl("1s"), Ok(std::time::Duration::from_secs(1)));
        assert!(presence_ttl("0s").is_err());
        assert!(presence_ttl("500ms").is_err());
        assert!(presence_ttl("soon").is_err());
    }

    #[test]
    fn an_otlp_endpoint_is_an_http_or_https_url() {
        assert_eq!(
            otlp_endpoint("http://localhost:4318").map(String::from),
            Ok("http://localhost:4318/".to_owned())
        );
        assert!(otlp_endpoint("https://collector.example/otlp").is_ok());
        for refused in ["localhost:4318", "grpc://localhost:4317", "", "http://"] {
            let err = otlp_endpoint(refused).expect_err(refused);
            assert!(err.contains("HERALD_OTLP_ENDPOINT"), "{refused}: {err}");
        }
    }
}
