//! Real Postgres and NATS for tests: a fresh migrated database and a stream
//! prefix of the test's own, so tests run in parallel without meeting. Every
//! crate's tests use it through the `testing` feature.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::{HashMap, HashSet};

use crate::{LogEntry, Relay, Topology};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The Postgres server tests use; override with HERALD_TEST_DATABASE_URL.
pub fn server_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The NATS server tests use; override with HERALD_TEST_NATS_URL.
pub fn nats_url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Test databases older than this are left over from aborted runs and dropped.
const STALE_AFTER_SECS: u64 = 3600;

/// The URL of a new database named for this test (created on first connect).
pub async fn fresh_database() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    drop_stale_databases(now).await;
    format!(
        "{}/herald_test_{now}_{}",
        server_url(),
        Uuid::new_v4().simple()
    )
}

/// A pool on a fresh, migrated database.
pub async fn migrated_pool(url: &str) -> PgPool {
    use sqlx::migrate::MigrateDatabase;
    sqlx::Postgres::create_database(url).await.unwrap();
    let pool = PgPool::connect(url).await.unwrap();
    sqlx::migrate!("../migrations").run(&pool).await.unwrap();
    pool
}

/// A stream prefix no other test uses; streams that aborted test runs left
/// behind are deleted.
pub async fn fresh_topology() -> Topology {
    delete_stale_streams().await;
    unique_topology()
}

/// A stream prefix no other test uses, named with the time it was made.
pub fn unique_topology() -> Topology {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Topology::new(format!("t{now}_{}", Uuid::new_v4().simple()))
}

/// Deletes the streams of test runs older than an hour.
pub async fn delete_stale_streams() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    use futures::TryStreamExt;
    let Ok(client) = async_nats::connect(nats_url()).await else {
        return;
    };
    let jetstream = async_nats::jetstream::new(client);
    let names: Vec<String> = jetstream
        .stream_names()
        .try_collect()
        .await
        .unwrap_or_default();
    for name in names {
        // A test's stream is `T<secs>_…`, its key-value buckets `KV_T<secs>_…`.
        let created = name
            .strip_prefix("KV_")
            .unwrap_or(&name)
            .strip_prefix('T')
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created + STALE_AFTER_SECS < now) {
            let _ = jetstream.delete_stream(&name).await;
        }
    }
}

/// Deletes a test's stream and its key-value buckets.
pub async fn delete_stream(topology: &Topology) {
    if let Ok(client) = async_nats::connect(nats_url()).await {
        let jetstream = async_nats::jetstream::new(client);
        let _ = jetstream.delete_stream(topology.stream_name()).await;
        for bucket in [topology.presence_bucket(), topology.last_seen_bucket()] {
            let _ = jetstream.delete_key_value(bucket).await;
        }
    }
}

async fn drop_stale_databases(now: u64) {
    let Ok(pool) = PgPool::connect(&format!("{}/postgres", server_url())).await else {
        return;
    };
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'herald\\_test\\_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    for name in names {
        let created = name
            .split('_')
            .nth(2)
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created + STALE_AFTER_SECS < now) {
            drop_database(&pool, &name).await;
        }
    }
}

async fn drop_database(server: &PgPool, name: &str) {
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(server)
        .await;
}

/// What a test made on the real servers: removed when the test passes; kept,
/// with a line naming it, when the test fails, so that it can be looked at.
/// (What an aborted run leaves is removed by a later run after an hour.)
#[derive(Debug, Default)]
pub struct Leftovers {
    database_url: Option<String>,
    topology: Option<Topology>,
}

impl Leftovers {
    /// The database at `database_url` and the stream of `topology`, as the
    /// test's own.
    pub fn new(database_url: Option<String>, topology: Option<Topology>) -> Self {
        Self {
            database_url,
            topology,
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let database = self
            .database_url
            .take()
            .and_then(|url| url.rsplit('/').next().map(str::to_owned));
        let topology = self.topology.take();
        if std::thread::panicking() {
            eprintln!(
                "the failed test's data is kept: database {}, stream {}",
                database.as_deref().unwrap_or("(none of its own)"),
                topology.map_or_else(|| "(none of its own)".to_owned(), |t| t.stream_name()),
            );
            return;
        }
        // Dropped inside the test's runtime, which cannot block on this: the
        // work gets a thread and a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Some(name) = database {
                    if let Ok(server) = PgPool::connect(&format!("{}/postgres", server_url())).await
                    {
                        drop_database(&server, &name).await;
                    }
                }
                if let Some(topology) = topology {
                    delete_stream(&topology).await;
                }
            });
        })
        .join();
    }
}

/// Every message of the test's stream, in stream order.
pub async fn stream_entries(topology: &Topology) -> Vec<LogEntry> {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = topology.ensure_stream(&jetstream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut entries = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            entries.push(LogEntry::from_json(&message.payload).unwrap());
        }
    }
    entries
}

/// Asserts the stream holds every event once, at dense positions in stream
/// order, each aggregate's events in their sequence order.
pub fn assert_complete_and_ordered(entries: &[LogEntry], event_ids: &[i64]) {
    let positions: Vec<i64> = entries.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=event_ids.len() as i64).collect::<Vec<_>>());
    let published: HashSet<i64> = entries.iter().map(|e| e.event_id).collect();
    assert_eq!(
        published.len(),
        entries.len(),
        "an event was published twice"
    );
    assert_eq!(published, event_ids.iter().copied().collect::<HashSet<_>>());
    let mut last_sequence: HashMap<(&str, &str), i64> = HashMap::new();
    for entry in entries {
        let last = last_sequence
            .entry((&entry.aggregate_type, &entry.aggregate_id))
            .or_insert(0);
        assert_eq!(entry.sequence, *last + 1, "aggregate events out of order");
        *last = entry.sequence;
    }
}

/// Appends one event to an aggregate directly, as the event store would;
/// its `event_id`.
pub async fn append(executor: &mut sqlx::PgConnection, aggregate_id: &str, sequence: i64) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Chat', $1, $2, 'MessageSent', '1', $3, '{\"correlation_id\":\"test\"}')
         RETURNING event_id",
    )
    .bind(aggregate_id)
    .bind(sequence)
    .bind(serde_json::json!({ "n": sequence }))
    .fetch_one(executor)
    .await
    .unwrap()
}

/// Starts a relay; dropping the returned sender stops it.
pub async fn start_relay(pool: &PgPool, topology: &Topology) -> (Relay, oneshot::Sender<()>) {
    let client = crate::connect(&nats_url()).await.unwrap();
    let relay = Relay::new(pool.clone(), client, topology.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(relay.clone().run(async {
        let _ = stopped.await;
    }));
    (relay, stop)
}

/// Waits until `relay` has published `count` events, for at most ten seconds.
pub async fn wait_until_published(relay: &Relay, count: i64) {
    for _ in 0..200 {
        if relay.status().published() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "relay published {} of {count} events",
        relay.status().published()
    );
}
