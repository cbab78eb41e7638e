//! The load driver: a fixed number of clients, each a closed loop (or paced to
//! a share of a target rate), sending the requests a [`Worker`] chooses and
//! timing every answer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::{Client, Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::lag::{LagReport, LagSender, LagTracker};
use crate::rss::{RssReport, RssSampler};
use crate::stats::{self, Percentiles};

/// Whether a request is one of the commands being measured or a side call
/// the workload needs (a payment provider's confirmation page, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command: timed and counted in the throughput.
    Command,
    /// Anything else: counted apart.
    Side,
}

/// One HTTP request a worker wants sent.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET, POST, PATCH or DELETE.
    pub method: Method,
    /// The full URL.
    pub url: String,
    /// The bearer token, if the endpoint needs one.
    pub token: Option<String>,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// Command or side call.
    pub kind: Kind,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its JSON body (`Null` when it had none or was not JSON).
    pub body: Value,
}

/// Chooses what each client sends next and learns from the answers, so that
/// later commands refer to what earlier ones created.
pub trait Worker: Send + 'static {
    /// The next request.
    fn next(&mut self) -> Request;
    /// Told the answer to the request `next` gave last; returns the read
    /// models (projection names) that show its effect.
    fn answered(&mut self, request: &Request, reply: &Reply) -> &'static [&'static str];
}

impl<W: Worker + ?Sized> Worker for Box<W> {
    fn next(&mut self) -> Request {
        (**self).next()
    }

    fn answered(&mut self, request: &Request, reply: &Reply) -> &'static [&'static str] {
        (**self).answered(request, reply)
    }
}

/// How to run the load.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// How long to send.
    pub duration: Duration,
    /// Total requests per second to aim at, spread over the clients; as fast
    /// as the answers come when absent.
    pub rate: Option<f64>,
    /// Time each accepted command's effect in its read models, watching
    /// this database (Herald's).
    pub lag: Option<sqlx::PgPool>,
    /// Append `idempotency-key, aggregate type, id, version` of every accepted
    /// command to this file, send every command with an `Idempotency-Key`,
    /// and repeat a request answered 503 (or not answered) with the same key
    /// until it is accepted or refused, as a careful client does in an outage.
    pub record: Option<PathBuf>,
    /// The server's process, whose memory is sampled during the run.
    pub pid: Option<u32>,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct CommandReport {
    /// Clients sending at once.
    pub concurrency: usize,
    /// The rate aimed at, if any.
    pub target_rate: Option<f64>,
    /// Seconds the run took.
    pub elapsed_s: f64,
    /// Commands answered 2xx.
    pub commands_ok: u64,
    /// Commands answered 2xx per second.
    pub throughput: f64,
    /// Latency of commands answered 2xx.
    pub latency: Percentiles,
    /// Answers by status, every attempt of every request, side calls included.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused or cut).
    pub transport_errors: u64,
    /// 5xx answers other than 503: each one is a bug.
    pub server_errors_not_503: u64,
    /// Side calls answered 2xx.
    pub side_ok: u64,
    /// End-to-end lag per read model: from a command's answer until the
    /// read model has committed its effect (so a read returns it).
    pub lag: BTreeMap<&'static str, Percentiles>,
    /// Commands whose effect was not seen in a read model within
    /// [`crate::lag::GIVE_UP`].
    pub lag_failures: BTreeMap<&'static str, u64>,
    /// The server's memory.
    pub rss: Option<RssReport>,
    /// Accepted commands written to the record file.
    pub recorded: u64,
    /// When the last client stopped: the end of the load.
    #[serde(skip)]
    pub finished: Instant,
}

#[derive(Default)]
struct Tally {
    latency: Option<Histogram<u64>>,
    commands_ok: u64,
    side_ok: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    recorded: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        if let Some(theirs) = other.latency {
            match &mut self.latency {
                Some(mine) => {
                    // Both histograms have the same bounds, so adding cannot fail.
                    let _ = mine.add(&theirs);
                }
                None => self.latency = Some(theirs),
            }
        }
        self.commands_ok += other.commands_ok;
        self.side_ok += other.side_ok;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.recorded += other.recorded;
    }
}

type RecordFile = Arc<Mutex<std::io::BufWriter<std::fs::File>>>;

/// Sends one request; `None` when no answer came.
pub async fn send(
    client: &Client,
    request: &Request,
    idempotency_key: Option<&str>,
) -> Option<Reply> {
    let mut builder = client.request(request.method.clone(), &request.url);
    if let Some(token) = &request.token {
        builder = builder.bearer_auth(token);
    }
    if let Some(key) = idempotency_key {
        builder = builder.header("idempotency-key", key);
    }
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    let response = builder.send().await.ok()?;
    let status = response.status();
    let bytes = response.bytes().await.ok()?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Some(Reply { status, body })
}

/// Runs `workers`, one client each, for `config.duration`.
pub async fn run<W: Worker>(
    client: &Client,
    workers: Vec<W>,
    config: &RunConfig,
) -> anyhow::Result<CommandReport> {
    let concurrency = workers.len();
    let record: Option<RecordFile> = match &config.record {
        Some(path) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )))),
        None => None,
    };
    let tracker = config.lag.clone().map(LagTracker::start);
    let sampler = config.pid.map(RssSampler::start);
    let started = Instant::now();
    let deadline = started + config.duration;
    let mut clients = JoinSet::new();
    for (index, worker) in workers.into_iter().enumerate() {
        let pace = config.rate.map(|rate| {
            let period = Duration::from_secs_f64(concurrency as f64 / rate.max(0.001));
            let offset = period.mul_f64(index as f64 / concurrency as f64);
            (period, offset)
        });
        clients.spawn(client_loop(
            client.clone(),
            worker,
            deadline,
            pace,
            tracker.as_ref().map(LagTracker::sender),
            record.clone(),
        ));
    }
    let mut tally = Tally::default();
    while let Some(done) = clients.join_next().await {
        tally.merge(done?);
    }
    let finished = Instant::now();
    let elapsed = finished - started;
    let lags = match tracker {
        Some(tracker) => tracker.finish().await?,
        None => LagReport::default(),
    };
    if let Some(record) = &record {
        let mut file = record
            .lock()
            .map_err(|_| anyhow::anyhow!("the record file's lock was poisoned"))?;
        file.flush()?;
    }
    let rss = match sampler {
        Some(sampler) => Some(sampler.stop().await),
        None => None,
    };
    let server_errors_not_503 = tally
        .statuses
        .iter()
        .filter(|(status, _)| **status >= 500 && **status != 503)
        .map(|(_, count)| count)
        .sum();
    Ok(CommandReport {
        concurrency,
        target_rate: config.rate,
        elapsed_s: elapsed.as_secs_f64(),
        commands_ok: tally.commands_ok,
        throughput: tally.commands_ok as f64 / elapsed.as_secs_f64(),
        latency: tally
            .latency
            .as_ref()
            .map(Percentiles::of)
            .unwrap_or_default(),
        statuses: tally.statuses,
        transport_errors: tally.transport_errors,
        server_errors_not_503,
        side_ok: tally.side_ok,
        lag: lags.lag,
        lag_failures: lags.failures,
        rss,
        recorded: tally.recorded,
        finished,
    })
}

/// How long a careful client keeps repeating a request through an outage.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

async fn client_loop<W: Worker>(
    client: Client,
    mut worker: W,
    deadline: Instant,
    pace: Option<(Duration, Duration)>,
    lags: Option<LagSender>,
    record: Option<RecordFile>,
) -> Tally {
    let mut tally = Tally {
        latency: Some(stats::histogram()),
        ..Tally::default()
    };
    let mut ticker = pace.map(|(period, offset)| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    while Instant::now() < deadline {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
            if Instant::now() >= deadline {
                break;
            }
        }
        let request = worker.next();
        let key = record.as_ref().map(|_| Uuid::new_v4().to_string());
        let sent = Instant::now();
        let mut reply = send(&client, &request, key.as_deref()).await;
        note(&mut tally, reply.as_ref());
        if record.is_some() {
            // Through an outage, the same request with the same key until it is decided.
            while reply
                .as_ref()
                .is_none_or(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
                && sent.elapsed() < GIVE_UP_AFTER
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                reply = send(&client, &request, key.as_deref()).await;
                note(&mut tally, reply.as_ref());
            }
        }
        let answered = Instant::now();
        let Some(reply) = reply else {
            continue;
        };
        if !reply.status.is_success() {
            worker.answered(&request, &reply);
            continue;
        }
        match request.kind {
            Kind::Side => tally.side_ok += 1,
            Kind::Command => {
                tally.commands_ok += 1;
                if let Some(histogram) = &mut tally.latency {
                    stats::record(histogram, answered - sent);
                }
            }
        }
        let models = worker.answered(&request, &reply);
        if request.kind != Kind::Command {
            continue;
        }
        let consistency = reply.body["consistency"].as_str().map(str::to_owned);
        if let (Some(record), Some(key), Some(token)) = (&record, &key, &consistency) {
            if let Some(line) = record_line(key, token) {
                if let Ok(mut file) = record.lock() {
                    if writeln!(file, "{line}").is_ok() {
                        tally.recorded += 1;
                    }
                }
            }
        }
        if let (Some(lags), Some(token)) = (&lags, consistency) {
            if let Some(token) = commands::ConsistencyToken::decode(&token) {
                let _ = lags.send((token, models, answered));
            }
        }
    }
    tally
}

fn note(tally: &mut Tally, reply: Option<&Reply>) {
    match reply {
        Some(reply) => *tally.statuses.entry(reply.status.as_u16()).or_default() += 1,
        None => tally.transport_errors += 1,
    }
}

/// `key<TAB>aggregate type<TAB>aggregate id<TAB>version`, from the token.
fn record_line(key: &str, token: &str) -> Option<String> {
    let token = commands::ConsistencyToken::decode(token)?;
    Some(format!(
        "{key}\t{}\t{}\t{}",
        token.aggregate_type, token.aggregate_id, token.version
    ))
}
