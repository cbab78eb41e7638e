//! The sequenced event log, read from Postgres: what the relay publishes, what a
//! projection falls back on to fill a gap, what auditors read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

mod canonical;
pub mod chain;
pub mod copy;
pub mod restore;
pub(crate) mod sequencer;

/// The Postgres channel the write side notifies after commits so the relay wakes
/// at once instead of at its next poll.
pub const COMMIT_CHANNEL: &str = "herald_events_committed";

/// One event at its place in the log: the message body published to JetStream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LogEntry {
    /// Dense position in commit order, starting at 1.
    pub position: i64,
    /// The event's identity (`events.event_id`), also its `Nats-Msg-Id`.
    pub event_id: i64,
    /// `Chat`, `Booking` or `Payment`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event's sequence within its aggregate, starting at 1.
    pub sequence: i64,
    /// The event's type, e.g. `MessageSent`.
    pub event_type: String,
    /// The version of the payload's shape.
    pub event_version: String,
    /// The event itself, as the domain serialized it.
    pub payload: serde_json::Value,
    /// Who, in which role, and why: `actor`, `role`, `correlation_id`,
    /// `causation_id`, and `traceparent` when the command was traced.
    pub metadata: serde_json::Value,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
}

impl LogEntry {
    /// The request that set this event in motion.
    pub fn correlation_id(&self) -> Option<&str> {
        self.metadata.get("correlation_id")?.as_str()
    }

    /// The trace context of the command that stored this event, when it was
    /// traced ([`crate::trace`]).
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata.get(crate::trace::TRACEPARENT)?.as_str()
    }

    /// The entry's event as the domain type `E`, brought up to its current
    /// shape first ([`domain::upcast::decode`]).
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        domain::upcast::decode(&self.event_type, &self.event_version, self.payload.clone())
    }

    /// The JSON body published for this entry.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads an entry back from a published body.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

const SELECT_ENTRIES: &str = "
    SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
           e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at
      FROM event_log l JOIN events e ON e.event_id = l.event_id";

/// Up to `limit` entries after `position`, in order.
pub async fn read_after<'c>(
    executor: impl PgExecutor<'c>,
    position: i64,
    limit: i64,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT_ENTRIES} WHERE l.position > $1 ORDER BY l.position LIMIT $2"
    ))
    .bind(position)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The entries after `from` up to `target`, at most `limit` of them: those
/// `received` from the stream when they are exactly the missing positions,
/// else read from the log, which fills whatever the stream skipped. Received
/// entries at or before `from` are dropped; the others stay in `received` for
/// the next call when the log had to be read. Empty when the log does not
/// hold the position after `from` yet.
pub async fn missing<'c>(
    executor: impl PgExecutor<'c>,
    from: i64,
    target: i64,
    received: &mut Vec<LogEntry>,
    limit: i64,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    received.retain(|entry| entry.position > from);
    let exactly_missing = received.last().map(|entry| entry.position) == Some(target)
        && received
            .iter()
            .enumerate()
            .all(|(i, entry)| entry.position == from + 1 + i as i64);
    if exactly_missing {
        return Ok(std::mem::take(received));
    }
    tracing::debug!(from, target, "filling a gap from the log");
    read_after(executor, from, (target - from).min(limit)).await
}

/// Up to `limit` entries of the given aggregate types after `position` and no
/// later than `up_to`, in order: a projection's share of a stretch of the log.
pub async fn read_of_types<'c>(
    executor: impl PgExecutor<'c>,
    aggregate_types: &[&str],
    position: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT_ENTRIES}
          WHERE l.position > $1 AND l.position <= $2 AND e.aggregate_type = ANY($3)
          ORDER BY l.position LIMIT $4"
    ))
    .bind(position)
    .bind(up_to)
    .bind(aggregate_types)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// An entry as a rebuild that folds the whole log reads it: its event as the
/// text it is stored as, borrowed from the [`StoredBatch`] it came in.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// Its position in the log.
    pub position: i64,
    /// `Chat`, `Booking` or `Payment`.
    pub aggregate_type: &'a str,
    /// The aggregate's id.
    pub aggregate_id: &'a str,
    /// The event's type.
    pub event_type: &'a str,
    /// The version of the payload's shape.
    pub event_version: &'a str,
    /// The payload as JSON text.
    pub payload: &'a str,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
}

impl Stored<'_> {
    /// The event as the domain type `E`, read straight from its text
    /// ([`domain::upcast::decode_text`]).
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        domain::upcast::decode_text(self.event_type, self.event_version, self.payload)
    }
}

/// A stretch of the log read with one binary `COPY` ([`read_stored`]).
#[derive(Debug)]
pub struct StoredBatch {
    messages: Vec<bytes::Bytes>,
    /// The last position the read covered, whether or not an entry of the
    /// types read is there.
    pub up_to: i64,
}

impl StoredBatch {
    /// The entries, in log order.
    pub fn entries(
        &self,
    ) -> Result<impl Iterator<Item = Result<Stored<'_>, sqlx::Error>>, sqlx::Error> {
        let mut tuples = copy::Tuples::new(&self.messages, 7)?;
        Ok(std::iter::from_fn(move || {
            tuples
                .next_tuple()
                .and_then(|tuple| tuple.map(stored).transpose())
                .transpose()
        }))
    }
}

fn stored(mut field: copy::Fields<'_>) -> Result<Stored<'_>, sqlx::Error> {
    Ok(Stored {
        position: field.int8()?,
        aggregate_type: field.text()?,
        aggregate_id: field.text()?,
        event_type: field.text()?,
        event_version: field.text()?,
        payload: field.text()?,
        recorded_at: field.timestamptz()?,
    })
}

/// The entries of `aggregate_types` after `after` up to and including
/// `up_to`, read with one binary `COPY` (the types are Herald's own names,
/// spliced into it).
pub async fn read_stored(
    conn: &mut sqlx::PgConnection,
    aggregate_types: &[&str],
    after: i64,
    up_to: i64,
) -> Result<StoredBatch, sqlx::Error> {
    let types = aggregate_types
        .iter()
        .map(|name| format!("'{}'", name.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let messages = copy::copy_out(
        conn,
        &format!(
            "SELECT l.position, e.aggregate_type, e.aggregate_id, e.event_type, e.event_version,
                    e.payload::text, e.recorded_at
               FROM event_log l JOIN events e ON e.event_id = l.event_id
              WHERE l.position > {after} AND l.position <= {up_to}
                AND e.aggregate_type IN ({types})
              ORDER BY l.position"
        ),
    )
    .await?;
    Ok(StoredBatch { messages, up_to })
}

/// Why a task that worked on the log's rows (on a blocking thread, say) did
/// not finish: its panic goes on, or it was cancelled with the runtime.
pub fn joined(err: tokio::task::JoinError) -> sqlx::Error {
    match err.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(_) => sqlx::Error::WorkerCrashed,
    }
}

/// The last position sequenced so far (0 for an empty log).
pub async fn head<'c>(executor: impl PgExecutor<'c>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT sequenced_position FROM relay_cursor")
        .fetch_one(executor)
        .await
}

/// When the events at `positions` were stored, in the order asked; `None`
/// for a position not sequenced yet.
pub async fn recorded_at<'c>(
    executor: impl PgExecutor<'c>,
    positions: &[i64],
) -> Result<Vec<Option<DateTime<Utc>>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT e.recorded_at
           FROM unnest($1::bigint[]) WITH ORDINALITY AS p (position, n)
           LEFT JOIN event_log l ON l.position = p.position
           LEFT JOIN events e ON e.event_id = l.event_id
          ORDER BY p.n",
    )
    .bind(positions)
    .fetch_all(executor)
    .await
}

/// The position of an aggregate's event, once the relay has sequenced it.
pub async fn position_of<'c>(
    executor: impl PgExecutor<'c>,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT l.position FROM events e JOIN event_log l ON l.event_id = e.event_id
          WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_optional(executor)
    .await
}
