//! A projection worker: a JetStream durable pull consumer applying batches.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use herald_nats::{log, LogEntry, Topology};
use sqlx::{Acquire, PgConnection, PgPool};
use tracing::Instrument;

use crate::{checkpoint, ApplyError, Projection};

/// Most entries applied in one transaction.
const BATCH: usize = 1000;
/// How often an entry is tried before it is set aside as a dead letter.
const ATTEMPTS: i32 = 3;
/// How long a worker waits for a message before looking at the log itself.
const IDLE_CATCH_UP: Duration = Duration::from_secs(1);
/// How long JetStream waits for an acknowledgement before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Why a worker stopped consuming for a while.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("nats: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the consumer's message stream ended")]
    StreamEnded,
}

/// Keeps one projection up to date from the stream.
pub struct Worker {
    pool: PgPool,
    jetstream: jetstream::Context,
    topology: Topology,
    projection: Projection,
}

impl Worker {
    /// A worker for `projection` of the deployment named by `topology`.
    pub fn new(
        pool: PgPool,
        client: async_nats::Client,
        topology: Topology,
        projection: Projection,
    ) -> Self {
        Self {
            pool,
            jetstream: jetstream::new(client),
            topology,
            projection,
        }
    }

    /// Consumes until `shutdown` completes. Failures of NATS or Postgres are
    /// waited out; nothing unapplied is acknowledged, so nothing is lost.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                result = self.consume() => {
                    if let Err(err) = result {
                        tracing::warn!(projection = %self.projection, %err, "projection worker paused");
                    }
                }
            }
            failures = (failures + 1).min(6);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_millis(50 << failures)) => {}
            }
        }
    }

    async fn consume(&self) -> Result<(), WorkerError> {
        checkpoint::ensure(&self.pool, self.projection).await?;
        let name = format!("{}-{}", self.topology.prefix(), self.projection.name());
        let consumer = self
            .topology
            .durable_consumer(&self.jetstream, &name, ACK_WAIT, 20 * BATCH as i64)
            .await?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(async_nats::Error::from)?
            .ready_chunks(BATCH);
        tracing::info!(projection = %self.projection, consumer = name, "projection worker consuming");
        self.catch_up().await?;
        loop {
            let chunk = match tokio::time::timeout(IDLE_CATCH_UP, messages.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_idle) => {
                    self.catch_up().await?;
                    continue;
                }
            };
            let mut received = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(message) => received.push(message),
                    // Missed heartbeats and reconnects are transient: keep going.
                    Err(err) => tracing::debug!(projection = %self.projection, %err, "pull error"),
                }
            }
            let Some(last) = received.last() else {
                continue;
            };
            let mut entries: Vec<LogEntry> = received
                .iter()
                .filter_map(|message| match LogEntry::from_json(&message.payload) {
                    Ok(entry) => Some(entry),
                    Err(err) => {
                        // The log in Postgres fills whatever this message held.
                        tracing::error!(projection = %self.projection, %err, "undecodable message");
                        None
                    }
                })
                .collect();
            entries.sort_by_key(|entry| entry.position);
            if let Some(target) = entries.last().map(|entry| entry.position) {
                self.apply_up_to(target, entries).await?;
            }
            // With AckPolicy::All this acknowledges the whole chunk, all applied.
            last.ack().await?;
        }
        Err(WorkerError::StreamEnded)
    }

    /// Applies whatever the log holds beyond the checkpoint, read from Postgres:
    /// entries whose messages went to a worker that died unacknowledged, or that
    /// NATS has not delivered yet.
    async fn catch_up(&self) -> Result<(), WorkerError> {
        let head = log::head(&self.pool).await?;
        self.apply_up_to(head, Vec::new()).await
    }

    /// Applies everything after the checkpoint up to `target`: the entries
    /// received when they are exactly the ones missing, else read from the log
    /// in batches.
    async fn apply_up_to(
        &self,
        target: i64,
        mut received: Vec<LogEntry>,
    ) -> Result<(), WorkerError> {
        let mut conn = self.pool.acquire().await?;
        loop {
            let mut tx = begin_batch(&mut conn).await?;
            let from = checkpoint::lock(&mut tx, self.projection).await?;
            if target <= from {
                tx.commit().await?;
                return Ok(());
            }
            received.retain(|entry| entry.position > from);
            let exactly_missing = received.last().map(|e| e.position) == Some(target)
                && received
                    .iter()
                    .enumerate()
                    .all(|(i, entry)| entry.position == from + 1 + i as i64);
            let entries = if exactly_missing {
                std::mem::take(&mut received)
            } else {
                tracing::debug!(projection = %self.projection, from, target, "filling a gap from the log");
                log::read_after(&mut *tx, from, (target - from).min(BATCH as i64)).await?
            };
            let Some(upto) = entries.last().map(|entry| entry.position) else {
                // Not sequenced in this database: nothing to apply yet.
                tx.commit().await?;
                return Ok(());
            };
            match self.apply_batch_traced(&mut tx, &entries).await {
                Ok(()) => {
                    checkpoint::advance(&mut tx, self.projection, upto).await?;
                    tx.commit().await?;
                }
                Err(ApplyError::Sql(err)) if is_transient(&err) => return Err(err.into()),
                Err(err) => {
                    tx.rollback().await?;
                    tracing::warn!(projection = %self.projection, %err, "batch failed; applying one entry at a time");
                    self.apply_one_by_one(&mut conn, entries).await?;
                }
            }
        }
    }

    /// Applies a batch inside a span that names each entry with its
    /// correlation id, so that what a request set in motion can be followed
    /// into the read side.
    async fn apply_batch_traced(
        &self,
        conn: &mut PgConnection,
        entries: &[LogEntry],
    ) -> Result<(), ApplyError> {
        let span = tracing::debug_span!(
            "apply_batch",
            projection = %self.projection,
            from = entries.first().map(|entry| entry.position),
            to = entries.last().map(|entry| entry.position),
        );
        async {
            for entry in entries {
                tracing::debug!(
                    position = entry.position,
                    event_type = entry.event_type,
                    correlation_id = entry.correlation_id(),
                    "applying"
                );
            }
            self.projection.apply_all(conn, entries).await
        }
        .instrument(span)
        .await
    }

    /// Applies one entry inside a span that carries its correlation id, so that
    /// what a request set in motion can be followed into the read side.
    async fn apply_traced(
        &self,
        conn: &mut PgConnection,
        entry: &LogEntry,
    ) -> Result<(), ApplyError> {
        let span = tracing::debug_span!(
            "apply",
            projection = %self.projection,
            position = entry.position,
            event_type = entry.event_type,
            correlation_id = entry.correlation_id(),
        );
        self.projection.apply(conn, entry).instrument(span).await
    }

    /// Applies entries in their own transactions, so that a poison entry is set
    /// aside as a dead letter after [`ATTEMPTS`] tries and the rest go on.
    async fn apply_one_by_one(
        &self,
        conn: &mut PgConnection,
        entries: Vec<LogEntry>,
    ) -> Result<(), WorkerError> {
        for entry in entries {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut tx = begin_batch(conn).await?;
                if checkpoint::lock(&mut tx, self.projection).await? >= entry.position {
                    tx.commit().await?;
                    break;
                }
                match self.apply_traced(&mut tx, &entry).await {
                    Ok(()) => {
                        checkpoint::advance(&mut tx, self.projection, entry.position).await?;
                        tx.commit().await?;
                        break;
                    }
                    Err(ApplyError::Sql(err)) if is_transient(&err) => return Err(err.into()),
                    Err(err) if attempt < ATTEMPTS => {
                        tx.rollback().await?;
                        tracing::warn!(projection = %self.projection, position = entry.position, attempt, %err, "entry failed");
                    }
                    Err(err) => {
                        tx.rollback().await?;
                        let mut tx = begin_batch(conn).await?;
                        checkpoint::lock(&mut tx, self.projection).await?;
                        checkpoint::bury(
                            &mut tx,
                            self.projection,
                            &entry,
                            &err.to_string(),
                            attempt,
                        )
                        .await?;
                        tx.commit().await?;
                        tracing::error!(
                            projection = %self.projection,
                            position = entry.position,
                            event_type = entry.event_type,
                            %err,
                            "entry set aside as a dead letter"
                        );
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether a failure is Postgres being away rather than a poison entry.
/// Opens a batch's transaction. Its commit does not wait for the disk: the
/// rows and the checkpoint commit together, so a batch that a Postgres crash
/// loses is applied again from the log when the worker starts, and the disk's
/// syncs are left to the commands, whose events are the record.
async fn begin_batch(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

fn is_transient(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}
