//! `herald-load`: drives Herald (or the plain cqrs-es app) over HTTP and
//! prints what it measured as JSON; also the fault suite's Postgres proxy,
//! its checker, and the generator of the replay benchmark's log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use api::auth::JwtKeys;
use bench::driver::{self, RunConfig, Worker};
use bench::plain_mix::PlainWorker;
use bench::seed::SeededChat;
use bench::stats::{self, Percentiles};
use clap::{Parser, Subcommand, ValueEnum};
use herald_nats::Topology;
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;

/// Load generator and checks for Herald's benchmarks and fault suite.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send commands and report throughput, latency, lag and memory.
    Commands(CommandArgs),
    /// Read one endpoint as fast as it answers and report rate and latency.
    ReadLoad(ReadLoadArgs),
    /// Read chat messages and bookings at a fixed rate and report latency.
    Reads(ReadArgs),
    /// Forward TCP connections (to Postgres); kill it to cut them all.
    Proxy {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// Address to forward to.
        #[arg(long, default_value = "127.0.0.1:5432")]
        upstream: String,
    },
    /// Fill an empty, migrated Herald database with a log of chats and bookings.
    Seed {
        /// The database.
        #[arg(long, env = "HERALD_DATABASE_URL")]
        database_url: String,
        /// How many events.
        #[arg(long, default_value_t = 1_000_000)]
        events: i64,
    },
    /// Write one long chat into a migrated Herald database, before Herald
    /// starts; prints the chat and its members as JSON, for
    /// `commands --workload hot-chat --chat`.
    SeedChat {
        /// The database.
        #[arg(long, env = "HERALD_DATABASE_URL")]
        database_url: String,
        /// How many messages the chat holds.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// How many members post in it.
        #[arg(long, default_value_t = 32)]
        members: usize,
    },
    /// Wait until every committed event is numbered, published and applied;
    /// prints how long that took.
    CatchUp {
        /// The database.
        #[arg(long, env = "HERALD_DATABASE_URL")]
        database_url: String,
        /// Longest wait, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// Only wait for the relay to number every event.
        #[arg(long)]
        sequenced_only: bool,
    },
    /// After a fault run: check the log, the stream and the read models.
    CheckFaults {
        /// The database.
        #[arg(long, env = "HERALD_DATABASE_URL")]
        database_url: String,
        /// NATS.
        #[arg(long, env = "HERALD_NATS_URL")]
        nats_url: String,
        /// The deployment's prefix.
        #[arg(long, env = "HERALD_NATS_PREFIX")]
        nats_prefix: String,
        /// The file `commands --record` wrote.
        #[arg(long)]
        record: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    /// Herald.
    Herald,
    /// The plain cqrs-es app's accounts.
    Plain,
}

/// What the clients send.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// Either app's mixed workload (bench/src/herald_mix.rs, bench/src/plain_mix.rs).
    Mix,
    /// Plain: every command opens a new account.
    Open,
    /// Herald: every command requests a new booking.
    Bookings,
    /// Herald: chat messages spread evenly over [`SPREAD_CHATS`] chats.
    Messages,
    /// Herald: every chat message into the one chat `seed-chat` wrote (--chat).
    HotChat,
}

/// How many chats the `messages` workload opens and posts into.
const SPREAD_CHATS: usize = 100;

#[derive(Debug, clap::Args)]
struct CommandArgs {
    /// Which app is being driven.
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    /// What the clients send.
    #[arg(long, value_enum, default_value = "mix")]
    workload: Workload,
    /// For `hot-chat`: the file `seed-chat` printed.
    #[arg(long, required_if_eq("workload", "hot-chat"))]
    chat: Option<PathBuf>,
    /// Its base URL.
    #[arg(long)]
    url: String,
    /// Clients sending at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to send.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Requests per second to aim at; as fast as possible when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Time each command's effect in its read models (needs --database-url).
    #[arg(long, requires = "database_url")]
    lag: bool,
    /// Record every accepted command to this file (see `RunConfig::record`).
    #[arg(long)]
    record: Option<PathBuf>,
    /// The server's pid, to sample its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Herald's database, to follow the pipeline during the run and time its
    /// catch-up afterwards.
    #[arg(long)]
    database_url: Option<String>,
    /// The secret Herald checks tokens with.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

/// What `read-load` reads.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReadKind {
    /// Herald: `GET /bookings/{id}`, the patient's own booking.
    Booking,
    /// Herald: `GET /chats/{id}/messages?limit=50` of a chat of 200 messages.
    Messages,
    /// Herald: `GET /bookings?limit=50` of a patient with 60 bookings.
    Bookings,
    /// The plain app: `GET /account/{id}` of an account with a deposit.
    Account,
    /// Herald: `POST /auth/login` of one patient, who signed up first (an
    /// argon2id check each time).
    SignIn,
}

#[derive(Debug, clap::Args)]
struct ReadLoadArgs {
    /// The app's base URL.
    #[arg(long)]
    url: String,
    /// What to read.
    #[arg(long, value_enum)]
    read: ReadKind,
    /// Send the first answer's `ETag` back as `If-None-Match`, as a poller does.
    #[arg(long)]
    poll: bool,
    /// Clients reading at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to read.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// The secret Herald checks tokens with.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ReadArgs {
    /// Herald's base URL.
    #[arg(long)]
    url: String,
    /// Reads per second, half of each kind.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds to read.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// The secret Herald checks tokens with.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Commands(args) => commands(args).await,
        Command::ReadLoad(args) => read_load(args).await,
        Command::Reads(args) => reads(args).await,
        Command::Proxy { listen, upstream } => Ok(bench::proxy::run(&listen, &upstream).await?),
        Command::Seed {
            database_url,
            events,
        } => {
            let pool = PgPool::connect(&database_url).await?;
            let started = Instant::now();
            let inserted = bench::seed::seed(&pool, events).await?;
            print_json(&serde_json::json!({
                "events": inserted,
                "seconds": started.elapsed().as_secs_f64(),
            }))
        }
        Command::SeedChat {
            database_url,
            messages,
            members,
        } => {
            let pool = PgPool::connect(&database_url).await?;
            let started = Instant::now();
            let chat = bench::seed::seed_chat(&pool, messages, members).await?;
            print_json(&SeedChatOutput {
                chat,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Command::CatchUp {
            database_url,
            timeout_s,
            sequenced_only,
        } => {
            let pool = PgPool::connect(&database_url).await?;
            let limit = Duration::from_secs(timeout_s);
            let waited = if sequenced_only {
                wait_sequenced(&pool, limit).await?
            } else {
                bench::check::wait_caught_up(&pool, limit).await?
            };
            print_json(&serde_json::json!({ "seconds": waited.as_secs_f64() }))
        }
        Command::CheckFaults {
            database_url,
            nats_url,
            nats_prefix,
            record,
        } => {
            let pool = PgPool::connect(&database_url).await?;
            let caught_up = bench::check::wait_caught_up(&pool, Duration::from_secs(300)).await?;
            eprintln!(
                "the pipeline caught up {:.1}s after the load",
                caught_up.as_secs_f64()
            );
            let report =
                bench::check::faults(&pool, &nats_url, &Topology::new(nats_prefix), &record)
                    .await?;
            print_json(&report)?;
            anyhow::ensure!(
                report.passed(),
                "the fault suite found a loss, a double or a difference"
            );
            Ok(())
        }
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?)
}

fn keys(secret: Option<String>) -> anyhow::Result<JwtKeys> {
    let secret = secret.context("HERALD_JWT_SECRET is needed to mint tokens")?;
    JwtKeys::new(&SecretString::from(secret)).map_err(|err| anyhow::anyhow!("{err}"))
}

/// What `seed-chat` prints.
#[derive(Debug, Serialize)]
struct SeedChatOutput {
    #[serde(flatten)]
    chat: SeededChat,
    /// How long writing it took.
    seconds: f64,
}

/// The pipeline during and after a command run.
#[derive(Debug, Serialize)]
struct PipelineReport {
    /// Most positions the slowest projection was behind the relay, sampled
    /// every 100 ms.
    max_positions_behind: i64,
    /// Mean of those samples.
    mean_positions_behind: f64,
    /// Seconds from the end of the load until every committed event was
    /// numbered, published and applied by every projection.
    catch_up_s: f64,
}

#[derive(Debug, Serialize)]
struct CommandsOutput {
    #[serde(flatten)]
    report: driver::CommandReport,
    pipeline: Option<PipelineReport>,
}

async fn commands(args: CommandArgs) -> anyhow::Result<()> {
    let client = http_client()?;
    let pool = match &args.database_url {
        Some(url) => Some(PgPool::connect(url).await?),
        None => None,
    };
    let config = RunConfig {
        duration: Duration::from_secs(args.duration_s),
        rate: args.rate,
        lag: pool.clone().filter(|_| args.lag),
        record: args.record.clone(),
        pid: args.pid,
    };
    let follower = pool.clone().map(|pool| {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        (stop, tokio::spawn(follow(pool, stopped)))
    });
    let workers = workers(&client, &args).await?;
    let report = driver::run(&client, workers, &config).await?;
    let pipeline = match (pool, follower) {
        (Some(pool), Some((stop, follower))) => {
            let _ = stop.send(());
            let samples = follower.await.unwrap_or_default();
            bench::check::wait_caught_up(&pool, Duration::from_secs(300)).await?;
            Some(PipelineReport {
                max_positions_behind: samples.iter().copied().max().unwrap_or(0),
                mean_positions_behind: samples.iter().sum::<i64>() as f64
                    / samples.len().max(1) as f64,
                catch_up_s: report.finished.elapsed().as_secs_f64(),
            })
        }
        _ => None,
    };
    print_json(&CommandsOutput { report, pipeline })
}

/// One client each: the workload's setup, done before the clock starts.
async fn workers(
    client: &reqwest::Client,
    args: &CommandArgs,
) -> anyhow::Result<Vec<Box<dyn Worker>>> {
    let (url, clients) = (args.url.as_str(), args.concurrency);
    if let Target::Plain = args.target {
        let worker = match args.workload {
            Workload::Mix => PlainWorker::mix,
            Workload::Open => PlainWorker::open,
            other => anyhow::bail!("the plain app has no {other:?} workload"),
        };
        return Ok(boxed((0..clients).map(|index| worker(url, index))));
    }
    let keys = keys(args.jwt_secret.clone())?;
    Ok(match args.workload {
        Workload::Mix => boxed(bench::herald_mix::setup(client, url, &keys, clients).await?),
        Workload::Bookings => boxed(bench::herald_single::bookers(url, &keys, clients)),
        Workload::Messages => {
            boxed(bench::herald_single::spread(client, url, &keys, clients, SPREAD_CHATS).await?)
        }
        Workload::HotChat => {
            let path = args.chat.as_ref().context("hot-chat needs --chat")?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let seeded: SeededChat = serde_json::from_str(&text)?;
            boxed(bench::herald_single::hot(url, &keys, &seeded, clients))
        }
        Workload::Open => {
            anyhow::bail!("Herald has no open workload: bookings opens its aggregates")
        }
    })
}

fn boxed<W: Worker>(workers: impl IntoIterator<Item = W>) -> Vec<Box<dyn Worker>> {
    workers
        .into_iter()
        .map(|worker| Box::new(worker) as Box<dyn Worker>)
        .collect()
}

/// Samples how far the slowest projection is behind the relay until told to stop.
async fn follow(pool: PgPool, mut stop: tokio::sync::oneshot::Receiver<()>) -> Vec<i64> {
    let mut samples = Vec::new();
    loop {
        if let Ok(now) = bench::check::progress(&pool).await {
            samples.push(now.sequenced - now.applied);
        }
        tokio::select! {
            _ = &mut stop => return samples,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Waits until the relay has numbered every committed event. Events are only
/// counted (a scan of the whole table) once the relay's position stops moving,
/// so that watching does not slow down what it measures.
async fn wait_sequenced(pool: &PgPool, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_position = -1;
    loop {
        let position: i64 = sqlx::query_scalar("SELECT sequenced_position FROM relay_cursor")
            .fetch_one(pool)
            .await?;
        let moving = std::mem::replace(&mut last_position, position) != position;
        if !moving {
            let now = bench::check::progress(pool).await?;
            if now.sequenced == now.committed {
                return Ok(started.elapsed());
            }
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the relay did not catch up: at position {position}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads one endpoint from many clients as fast as it answers, after a setup
/// that writes what it reads and waits until it can be read.
async fn read_load(args: ReadLoadArgs) -> anyhow::Result<()> {
    let client = http_client()?;
    let url = args.url.trim_end_matches('/');
    let read = match args.read {
        ReadKind::Account => {
            let account = uuid::Uuid::new_v4();
            let address = format!("{url}/account/{account}");
            for command in [
                serde_json::json!({ "OpenAccount": { "account_id": account } }),
                serde_json::json!({ "DepositMoney": { "amount": 1_000 } }),
            ] {
                let answer = client.post(&address).json(&command).send().await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "the plain app answered {}",
                    answer.status()
                );
            }
            bench::read_load::Read {
                url: address,
                token: None,
                etag: None,
                body: None,
            }
        }
        ReadKind::SignIn => {
            let credentials = serde_json::json!({
                "email": format!("bench-{}@example.com", uuid::Uuid::new_v4().simple()),
                "password": "a benchmark's password",
            });
            let mut account = credentials.clone();
            account["name"] = "Bench Patient".into();
            let answer = client
                .post(format!("{url}/api/v1/auth/register"))
                .json(&account)
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "signing up answered {}",
                answer.status()
            );
            bench::read_load::Read {
                url: format!("{url}/api/v1/auth/login"),
                token: None,
                etag: None,
                body: Some(credentials),
            }
        }
        kind => {
            let keys = keys(args.jwt_secret.clone())?;
            let fixture = bench::herald_mix::read_fixture(&client, url, &keys, 200, 60).await?;
            let url = match kind {
                ReadKind::Booking => fixture.booking_url,
                ReadKind::Messages => fixture.messages_url,
                _ => fixture.bookings_url,
            };
            bench::read_load::Read {
                url,
                token: Some(fixture.token),
                etag: None,
                body: None,
            }
        }
    };
    let read = read
        .ready(&client, args.poll, Duration::from_secs(30))
        .await?;
    let report = bench::read_load::run(
        &client,
        read,
        args.concurrency,
        Duration::from_secs(args.duration_s),
    )
    .await;
    print_json(&report)
}

#[derive(Debug, Serialize)]
struct ReadsOutput {
    rate: f64,
    elapsed_s: f64,
    chat_messages: Percentiles,
    bookings: Percentiles,
    failures: u64,
}

/// Reads at a fixed rate: each read is sent at its scheduled time on its own
/// task, so a slow answer does not delay the next read, and timed from then.
async fn reads(args: ReadArgs) -> anyhow::Result<()> {
    let client = http_client()?;
    let keys = keys(Some(args.jwt_secret))?;
    let fixture = bench::herald_mix::read_fixture(&client, &args.url, &keys, 200, 60).await?;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    let mut index = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let (kind, url) = if index.is_multiple_of(2) {
            (0, fixture.messages_url.clone())
        } else {
            (1, fixture.bookings_url.clone())
        };
        index += 1;
        let (client, token) = (client.clone(), fixture.token.clone());
        tasks.spawn(async move {
            let scheduled = Instant::now();
            let ok = client
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            let body = match ok {
                Some(response) => response.bytes().await.is_ok(),
                None => false,
            };
            (kind, body, scheduled.elapsed())
        });
    }
    let (mut messages, mut bookings) = (stats::histogram(), stats::histogram());
    let mut failures = 0;
    while let Some(done) = tasks.join_next().await {
        let (kind, ok, elapsed) = done?;
        if !ok {
            failures += 1;
        } else if kind == 0 {
            stats::record(&mut messages, elapsed);
        } else {
            stats::record(&mut bookings, elapsed);
        }
    }
    print_json(&ReadsOutput {
        rate: args.rate,
        elapsed_s: started.elapsed().as_secs_f64(),
        chat_messages: Percentiles::of(&messages),
        bookings: Percentiles::of(&bookings),
        failures,
    })
}
