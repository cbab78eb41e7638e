//! What the fault suite proves once the load has stopped: every answered
//! command is in the log exactly once, JetStream holds each event once, and
//! every read model equals a fresh rebuild from the log.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use herald_nats::{LogEntry, Topology};
use projections::Projection;
use serde::Serialize;
use sqlx::PgPool;

/// The pipeline's progress at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    /// Events committed to the store.
    pub committed: i64,
    /// Events the relay numbered.
    pub sequenced: i64,
    /// The last position JetStream acknowledged.
    pub published: i64,
    /// The least checkpoint of all projections.
    pub applied: i64,
}

impl Progress {
    /// Whether every committed event is numbered, published and applied.
    pub fn caught_up(&self) -> bool {
        self.sequenced == self.committed
            && self.published == self.committed
            && self.applied == self.committed
    }
}

/// Where the pipeline is now.
pub async fn progress(pool: &PgPool) -> Result<Progress, sqlx::Error> {
    let (committed, sequenced, published, applied): (i64, i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events),
                sequenced_position, (SELECT position FROM relay_published),
                (SELECT min(coalesce(c.position, 0))
                   FROM unnest($1::text[]) AS p(name)
                   LEFT JOIN projection_checkpoints c ON c.projection = p.name)
           FROM relay_cursor",
    )
    .bind(Projection::ALL.map(Projection::name).to_vec())
    .fetch_one(pool)
    .await?;
    Ok(Progress {
        committed,
        sequenced,
        published,
        applied: applied.unwrap_or(0),
    })
}

/// Waits until the pipeline has caught up with the store, and says how long
/// that took; gives up after `limit`.
pub async fn wait_caught_up(pool: &PgPool, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let now = progress(pool).await?;
        if now.caught_up() {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the pipeline did not catch up within {limit:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the fault suite found.
#[derive(Debug, Default, Serialize)]
pub struct FaultReport {
    /// Commands answered 2xx, as recorded by the load.
    pub answered: i64,
    /// Of those, how many are in the log, at the answered version, once.
    pub stored_once: i64,
    /// Answered but absent from the log: each one is a lost write.
    pub missing: i64,
    /// Answered and stored by more than one transaction: each one is a
    /// double write.
    pub duplicated: i64,
    /// Events in the store.
    pub events: i64,
    /// Positions the relay gave out; equal to `events` when none is missing.
    pub positions: i64,
    /// Whether positions run 1, 2, 3, … without a gap.
    pub positions_dense: bool,
    /// Messages in the JetStream stream.
    pub stream_messages: i64,
    /// Events published more than once.
    pub stream_duplicates: i64,
    /// Events never published.
    pub stream_missing: i64,
    /// Whether the stream holds the log in position order.
    pub stream_in_order: bool,
    /// Rows that differ between each read model and its rebuild.
    pub read_model_differences: Vec<(String, i64)>,
    /// Entries set aside by projections.
    pub dead_letters: i64,
}

impl FaultReport {
    /// Whether everything the suite promises held.
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.stored_once == self.answered
            && self.positions == self.events
            && self.positions_dense
            && self.stream_messages == self.events
            && self.stream_duplicates == 0
            && self.stream_missing == 0
            && self.stream_in_order
            && self.read_model_differences.iter().all(|(_, n)| *n == 0)
    }
}

/// Checks the log, the stream and the read models against the commands
/// recorded in `record`.
pub async fn faults(
    pool: &PgPool,
    nats_url: &str,
    topology: &Topology,
    record: &Path,
) -> anyhow::Result<FaultReport> {
    let mut report = FaultReport::default();
    answered_commands(pool, record, &mut report).await?;
    let (events, positions, max_position): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), count(*), max(position) FROM event_log",
    )
    .fetch_one(pool)
    .await?;
    report.events = events;
    report.positions = positions;
    report.positions_dense = max_position.unwrap_or(0) == positions;
    stream(pool, nats_url, topology, &mut report).await?;
    for projection in Projection::ALL {
        let differing = differences_from_rebuild(pool, projection).await?;
        report
            .read_model_differences
            .push((projection.name().to_owned(), differing));
    }
    report.dead_letters = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(pool)
        .await?;
    Ok(report)
}

/// Loads the record file and matches every line with the log.
async fn answered_commands(
    pool: &PgPool,
    record: &Path,
    report: &mut FaultReport,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(record)
        .with_context(|| format!("cannot read {}", record.display()))?;
    let (mut keys, mut types, mut ids, mut versions) = (vec![], vec![], vec![], vec![]);
    for line in text.lines().filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [key, aggregate_type, aggregate_id, version] = fields[..] else {
            anyhow::bail!("a record line is not key, type, id, version: {line}");
        };
        keys.push(key.to_owned());
        types.push(aggregate_type.to_owned());
        ids.push(aggregate_id.to_owned());
        versions.push(version.parse::<i64>()?);
    }
    report.answered = keys.len() as i64;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "CREATE TEMP TABLE answered (key text, aggregate_type text, aggregate_id text, version bigint)
         ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO answered
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])",
    )
    .bind(&keys)
    .bind(&types)
    .bind(&ids)
    .bind(&versions)
    .execute(&mut *tx)
    .await?;
    // Per answered command: is the answered version stored, by that request,
    // and how many transactions stored events under its key.
    let (stored_once, missing, duplicated): (Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "WITH by_key AS (
             SELECT metadata->>'idempotency_key' AS key, count(DISTINCT xid::text) AS writes
               FROM events
              WHERE metadata ? 'idempotency_key'
              GROUP BY 1),
         matched AS (
             SELECT a.key,
                    EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = a.aggregate_type
                               AND e.aggregate_id = a.aggregate_id
                               AND e.sequence = a.version
                               AND e.metadata->>'idempotency_key' = a.key) AS stored,
                    coalesce(k.writes, 0) AS writes
               FROM answered a LEFT JOIN by_key k ON k.key = a.key)
         SELECT sum((stored AND writes = 1)::int), sum((NOT stored)::int), sum((writes > 1)::int)
           FROM matched",
        )
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    report.stored_once = stored_once.unwrap_or(0);
    report.missing = missing.unwrap_or(0);
    report.duplicated = duplicated.unwrap_or(0);
    Ok(())
}

/// Reads the whole stream and compares it with the log.
async fn stream(
    pool: &PgPool,
    nats_url: &str,
    topology: &Topology,
    report: &mut FaultReport,
) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let jetstream = jetstream::new(client);
    let mut stream = jetstream.get_stream(topology.stream_name()).await?;
    let total = stream.info().await?.state.messages;
    let reader = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut messages = reader.messages().await?;
    let mut published: HashSet<i64> = HashSet::new();
    let mut in_order = true;
    let mut last_position = 0;
    let mut received = 0u64;
    while received < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("the stream stopped delivering")?
            .context("the stream ended early")?
            .map_err(|err| anyhow::anyhow!("reading the stream: {err}"))?;
        received += 1;
        let entry = LogEntry::from_json(&message.payload)?;
        in_order &= entry.position == last_position + 1;
        last_position = entry.position;
        if !published.insert(entry.event_id) {
            report.stream_duplicates += 1;
        }
    }
    let logged: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM event_log")
        .fetch_all(pool)
        .await?;
    report.stream_messages = total as i64;
    report.stream_missing = logged
        .iter()
        .filter(|event_id| !published.contains(event_id))
        .count() as i64;
    report.stream_in_order = in_order;
    Ok(())
}

/// Rebuilds `projection` from the log up to its live checkpoint beside the
/// live tables and counts the rows that differ.
pub async fn differences_from_rebuild(
    pool: &PgPool,
    projection: Projection,
) -> anyhow::Result<i64> {
    let up_to = projections::checkpoint(pool, projection).await?;
    let schema = format!("faults_rebuild_{}", projection.name());
    projections::rebuild_into(pool, projection, &schema, up_to).await?;
    let mut differing = 0;
    for table in projection.tables() {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (
                (SELECT * FROM public.{table} EXCEPT ALL SELECT * FROM {schema}.{table})
                UNION ALL
                (SELECT * FROM {schema}.{table} EXCEPT ALL SELECT * FROM public.{table})
             ) AS differences"
        ))
        .fetch_one(pool)
        .await?;
        differing += count;
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await?;
    Ok(differing)
}
