//! Operations endpoints (no `/api/v1`, no JWT): liveness, readiness with the
//! failing check named, and Prometheus metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use commands::CommandError;
use herald_nats::RelayStatus;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use projections::Projection;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A projection further behind the log than this many entries is not ready.
const MAX_PROJECTION_LAG: i64 = 10_000;
/// Committed events waiting this long behind an open transaction make the relay not ready.
const MAX_HORIZON_AGE: Duration = Duration::from_secs(30);
/// Longest a readiness probe waits for Postgres.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Histogram buckets of every `*_seconds` metric: from a fast read to a slow
/// command under load.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Histogram buckets of how many commands a group commit appended.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How far back the command rate and latency on the dashboard look.
const COMMAND_WINDOW: Duration = Duration::from_secs(60);
/// Most commands the window remembers; past that the oldest are forgotten
/// early, so a flood cannot grow it without bound.
const COMMAND_WINDOW_CAP: usize = 200_000;

/// What the operations endpoints look at.
pub struct Ops {
    pool: PgPool,
    nats: Option<async_nats::Client>,
    relay: Option<Arc<RelayStatus>>,
    metrics: PrometheusHandle,
    /// When each command of the last [`COMMAND_WINDOW`] finished, and how
    /// long it took.
    commands: Mutex<VecDeque<(Instant, Duration)>>,
}

impl Ops {
    /// Operations of a process using `pool`; `nats` and `relay` when it runs them.
    pub fn new(
        pool: PgPool,
        nats: Option<async_nats::Client>,
        relay: Option<Arc<RelayStatus>>,
    ) -> Self {
        Self {
            pool,
            nats,
            relay,
            metrics: recorder(),
            commands: Mutex::new(VecDeque::new()),
        }
    }

    /// Notes a command that took `took`, finished now.
    fn command_done(&self, took: Duration) {
        let now = Instant::now();
        let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        while commands.len() >= COMMAND_WINDOW_CAP
            || commands
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > COMMAND_WINDOW)
        {
            commands.pop_front();
        }
        commands.push_back((now, took));
    }

    /// Commands per second over the last [`COMMAND_WINDOW`], and the 99th
    /// percentile of their latency in milliseconds (`None` without any).
    fn command_rate(&self) -> (f64, Option<f64>) {
        let now = Instant::now();
        let mut took: Vec<Duration> = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= COMMAND_WINDOW)
            .map(|(_, took)| *took)
            .collect();
        let rate = took.len() as f64 / COMMAND_WINDOW.as_secs_f64();
        took.sort_unstable();
        let p99 = took
            .len()
            .checked_sub(1)
            .map(|last| took[last * 99 / 100].as_secs_f64() * 1000.0);
        (rate, p99)
    }

    /// The pipeline's health as the dashboard shows it; `sockets` is how many
    /// WebSockets this process holds.
    pub async fn pipeline(&self, sockets: Option<usize>) -> Result<Pipeline, sqlx::Error> {
        let head = herald_nats::log::head(&self.pool).await?;
        let lags = projection_lags(&self.pool, head).await?;
        let oldest_unapplied: Vec<i64> = lags.iter().map(|lag| lag.position + 1).collect();
        let waiting_since = herald_nats::log::recorded_at(&self.pool, &oldest_unapplied).await?;
        let now = chrono::Utc::now();
        let projections = lags
            .into_iter()
            .zip(waiting_since)
            .map(|(lag, since)| ProjectionLag {
                name: lag.projection.name(),
                position: lag.position,
                lag: lag.lag,
                lag_ms: since
                    .filter(|_| lag.lag > 0)
                    .map_or(0, |since| (now - since).num_milliseconds().max(0)),
            })
            .collect();
        let dead_letters = projections::dead_letters(&self.pool).await?;
        let (commands_per_second, command_p99_ms) = self.command_rate();
        Ok(Pipeline {
            head,
            relay: self.relay.as_ref().map(|relay| RelayHealth {
                active: relay.is_active(),
                sequenced: relay.sequenced(),
                published: relay.published(),
                horizon_age_ms: i64::try_from(relay.horizon_age().as_millis()).unwrap_or(i64::MAX),
            }),
            projections,
            retriable: Projection::ALL.map(Projection::name).to_vec(),
            dead_letters,
            websocket_connections: sockets,
            commands_per_second,
            command_p99_ms,
        })
    }
}

/// One projection's checkpoint and how far it is behind the log's head.
struct Lag {
    projection: Projection,
    position: i64,
    lag: i64,
}

/// Every projection's [`Lag`] behind `head`.
async fn projection_lags(pool: &PgPool, head: i64) -> Result<Vec<Lag>, sqlx::Error> {
    let positions = projections::checkpoints(pool, &Projection::ALL).await?;
    Ok(Projection::ALL
        .into_iter()
        .zip(positions)
        .map(|(projection, position)| Lag {
            projection,
            position,
            lag: head - position,
        })
        .collect())
}

/// The pipeline's health: the log's head, the relay, each projection's lag,
/// dead letters, live connections and the command rate.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pipeline {
    /// The last position sequenced.
    pub head: i64,
    /// The relay of this process; `null` where it runs none.
    pub relay: Option<RelayHealth>,
    /// Each projection's checkpoint and lag.
    pub projections: Vec<ProjectionLag>,
    /// The followers whose dead letters may be retried (the projections); the
    /// process manager's are listed for an operator to act on.
    pub retriable: Vec<&'static str>,
    /// Every entry a follower set aside, oldest first.
    pub dead_letters: Vec<projections::DeadLetter>,
    /// WebSockets open on this process; `null` where live updates do not run.
    pub websocket_connections: Option<usize>,
    /// Commands (writes under `/api/v1`) per second over the last minute, on
    /// this process.
    pub commands_per_second: f64,
    /// The 99th percentile of their latency in milliseconds; `null` without
    /// any in the last minute.
    pub command_p99_ms: Option<f64>,
}

/// The relay as this process sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayHealth {
    /// Whether this process holds the relay lock.
    pub active: bool,
    /// The last position numbered.
    pub sequenced: i64,
    /// The last position JetStream acknowledged.
    pub published: i64,
    /// How long committed events have waited behind an open transaction.
    pub horizon_age_ms: i64,
}

/// How far one projection is behind the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionLag {
    /// The projection's name.
    pub name: &'static str,
    /// The position it has applied up to.
    pub position: i64,
    /// Positions it has still to apply.
    pub lag: i64,
    /// How long the oldest entry it has still to apply has been in the log,
    /// in milliseconds; 0 when it is caught up.
    pub lag_ms: i64,
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("herald_append_batch_commands".to_owned()),
                        BATCH_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (several servers in one
            // test process); this handle then renders an empty page.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The operations routes, each with its description.
pub fn routes<S: Clone + Send + Sync + 'static>(ops: Arc<Ops>) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(metrics_page))
        .with_state(ops)
}

/// Answers while the process runs, whatever its dependencies do.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    operation_id = "health_live",
    responses((status = 200, description = "The process runs", body = Liveness))
)]
async fn live() -> Json<Liveness> {
    Json(Liveness { status: "live" })
}

/// What `/health/live` answers.
#[derive(Debug, Serialize, ToSchema)]
struct Liveness {
    /// Always `live`.
    status: &'static str,
}

/// Middleware: counts requests by route, method and status, and times them;
/// writes under `/api/v1` are the commands the dashboard's rate counts.
pub async fn track_http(State(ops): State<Arc<Ops>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let command = request.method() != Method::GET
        && request.method() != Method::HEAD
        && request.uri().path().starts_with("/api/v1/");
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    if command {
        ops.command_done(started.elapsed());
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// One readiness check.
#[derive(Debug, Serialize, ToSchema)]
struct Check {
    /// Whether it passed.
    ok: bool,
    /// What was measured, e.g. a projection's `position` and `lag`, or the
    /// kind of `error`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

impl Check {
    fn new(ok: bool, detail: serde_json::Value) -> Self {
        Self { ok, detail }
    }
}

/// What `/health/ready` answers.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    /// The names of the failed checks.
    failing: Vec<String>,
    /// Each check by name (`postgres`, `nats`, `relay`, `projection:<name>`).
    checks: BTreeMap<String, Check>,
}

/// Whether this process can serve: Postgres, NATS, the relay's horizon and
/// each projection's lag.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    operation_id = "health_ready",
    responses(
        (status = 200, description = "Every check passed", body = Readiness),
        (status = 503, description = "`failing` names each failed check", body = Readiness),
    )
)]
async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let mut checks = BTreeMap::new();
    let postgres = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query_scalar::<_, i64>("SELECT sequenced_position FROM relay_cursor")
            .fetch_one(&ops.pool),
    )
    .await;
    let head = match postgres {
        Ok(Ok(head)) => {
            checks.insert(
                "postgres".to_owned(),
                Check::new(true, serde_json::json!({})),
            );
            Some(head)
        }
        Ok(Err(err)) => {
            // The probe needs no token, so it says what kind of failure this
            // is and leaves the database's own words to the log.
            tracing::warn!(error = %err, "readiness: the Postgres probe failed");
            let error = match CommandError::from(err) {
                CommandError::Unavailable(_) => "unavailable",
                _ => "query failed",
            };
            checks.insert(
                "postgres".to_owned(),
                Check::new(false, serde_json::json!({ "error": error })),
            );
            None
        }
        Err(_) => {
            checks.insert(
                "postgres".to_owned(),
                Check::new(false, serde_json::json!({ "error": "timed out" })),
            );
            None
        }
    };
    if let Some(nats) = &ops.nats {
        let state = nats.connection_state();
        let connected = matches!(state, async_nats::connection::State::Connected);
        checks.insert(
            "nats".to_owned(),
            Check::new(connected, serde_json::json!({ "state": state.to_string() })),
        );
    }
    if let Some(relay) = &ops.relay {
        let age = relay.horizon_age();
        checks.insert(
            "relay".to_owned(),
            Check::new(
                age < MAX_HORIZON_AGE,
                serde_json::json!({
                    "active": relay.is_active(),
                    "sequenced": relay.sequenced(),
                    "published": relay.published(),
                    "horizon_age_seconds": age.as_secs_f64(),
                }),
            ),
        );
    }
    if let Some(head) = head {
        if let Ok(lags) = projection_lags(&ops.pool, head).await {
            for Lag {
                projection,
                position,
                lag,
            } in lags
            {
                checks.insert(
                    format!("projection:{projection}"),
                    Check::new(
                        lag <= MAX_PROJECTION_LAG,
                        serde_json::json!({ "position": position, "lag": lag }),
                    ),
                );
            }
        }
    }
    let failing: Vec<String> = checks
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(n, _)| n.clone())
        .collect();
    let (status, word) = if failing.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(Readiness {
            status: word,
            failing,
            checks,
        }),
    )
        .into_response()
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
    )
)]
async fn metrics_page(State(ops): State<Arc<Ops>>) -> Response {
    if let Some(relay) = &ops.relay {
        metrics::gauge!("herald_relay_active").set(if relay.is_active() { 1.0 } else { 0.0 });
        metrics::gauge!("herald_relay_sequenced_position").set(relay.sequenced() as f64);
        metrics::gauge!("herald_relay_published_position").set(relay.published() as f64);
        metrics::gauge!("herald_relay_lag").set((relay.sequenced() - relay.published()) as f64);
        metrics::gauge!("herald_relay_horizon_age_seconds").set(relay.horizon_age().as_secs_f64());
    }
    if let Ok(head) = herald_nats::log::head(&ops.pool).await {
        if let Ok(lags) = projection_lags(&ops.pool, head).await {
            for lag in lags {
                let name = lag.projection.name();
                metrics::gauge!("herald_projection_position", "projection" => name)
                    .set(lag.position as f64);
                metrics::gauge!("herald_projection_lag", "projection" => name).set(lag.lag as f64);
            }
        }
    }
    if let Ok(letters) = projections::dead_letters(&ops.pool).await {
        for follower in crate::background::follower_names() {
            let count = letters.iter().filter(|l| l.projection == follower).count();
            metrics::gauge!("herald_dead_letters", "projection" => follower).set(count as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
        .into_response()
}
