//! Group commit: the events of commands that arrive together are appended to
//! the log in one statement, one transaction and one commit.
//!
//! One task per [`WriteSide`](crate::WriteSide) takes appends from a queue in
//! the order they were decided and commits whatever has gathered while the
//! previous batch was being committed. Each command's events stay
//! all-or-nothing and are still checked against their aggregate's version by
//! the primary key of `events`. When a batch fails, its appends are retried one
//! by one, so that only the command that broke a rule (a version taken by
//! another process, a message id already used) fails, and its neighbours
//! commit. Nothing is acknowledged before its commit. A command that changes
//! an account (`crate::accounts`) has that change written after the events,
//! in the same transaction.

use std::collections::HashSet;

use herald_nats::log::COMMIT_CHANNEL;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::accounts::AccountWrite;
use crate::cache::Basis;

/// Most events one batch appends.
const MAX_BATCH_EVENTS: usize = 1024;

/// Appends a batch: the events, the snapshots of aggregates that reached
/// their next snapshot, and one `NOTIFY` that wakes the relay, all in one
/// statement and therefore one transaction. A snapshot replaces the
/// aggregate's earlier one.
const APPEND: &str = "
WITH appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT t, i, s, et, ev, p::jsonb, m::jsonb
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
           AS e (t, i, s, et, ev, p, m)
), replaced AS (
    DELETE FROM snapshots s
     USING unnest($8::text[], $9::text[]) AS n (aggregate_type, aggregate_id)
     WHERE s.aggregate_type = n.aggregate_type AND s.aggregate_id = n.aggregate_id
), taken AS (
    INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
    SELECT t, i, s, s, p::jsonb
      FROM unnest($8::text[], $9::text[], $10::bigint[], $11::text[]) AS n (t, i, s, p)
)
SELECT pg_notify($12, '')";

/// One command's events, decided on the aggregate state of `basis`.
pub(crate) struct Append {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    /// The sequence of the first event; the others follow it.
    pub first_sequence: u64,
    /// Each event's type, version and JSON payload.
    pub events: Vec<(String, String, String)>,
    /// Stored with every event, as JSON.
    pub metadata: String,
    /// The aggregate's state after these events as JSON, when it is due a snapshot.
    pub snapshot: Option<String>,
    /// The caller's idempotency key: `(actor, key)`.
    pub idempotency: Option<(Uuid, String)>,
    /// The change to the user's account the command's events record, if any.
    pub account: Option<AccountWrite>,
    /// Which cached state the events were decided on.
    pub basis: Basis,
    /// Told the outcome once it is known.
    pub reply: oneshot::Sender<Result<(), AppendError>>,
}

impl Append {
    fn last_sequence(&self) -> u64 {
        self.first_sequence + self.events.len() as u64 - 1
    }
}

/// Why an append was not stored.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// The aggregate's version was taken, or the state the command was decided
    /// on was discarded, or its idempotency key was claimed: decide again.
    Conflict,
    /// Postgres could not be reached; whether the batch committed is unknown.
    Unavailable,
    /// The store refused the events (e.g. a rule kept by a constraint).
    Store(sqlx::Error),
}

/// The queue of the batch task. It is unbounded so that queueing never
/// waits: a command applies its events to the cached state and queues them
/// without an await in between, so a request dropped half-way cannot leave
/// the cache ahead of the log. Each queued append is a command a client
/// waits on, so the HTTP server's limits bound it.
#[derive(Clone)]
pub(crate) struct Appender {
    queue: mpsc::UnboundedSender<Append>,
}

impl Appender {
    /// Starts the batch task on `pool`; it ends once every handle is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, receiver));
        Self { queue }
    }

    /// Queues `append` behind every append queued before it.
    pub fn queue(&self, append: Append) {
        if let Err(mpsc::error::SendError(append)) = self.queue.send(append) {
            settle(append, Err(AppendError::Unavailable));
        }
    }
}

async fn run(pool: PgPool, mut queue: mpsc::UnboundedReceiver<Append>) {
    let mut carried: Option<Append> = None;
    loop {
        let first = match carried.take() {
            Some(append) => append,
            None => match queue.recv().await {
                Some(append) => append,
                None => return,
            },
        };
        let mut keys = HashSet::new();
        let mut events = first.events.len();
        keys.extend(first.idempotency.clone());
        let mut batch = vec![first];
        while events < MAX_BATCH_EVENTS {
            let Ok(next) = queue.try_recv() else { break };
            // Two commands with one idempotency key go to separate
            // transactions, so that the second finds the first's key taken.
            if next
                .idempotency
                .as_ref()
                .is_some_and(|key| !keys.insert(key.clone()))
            {
                carried = Some(next);
                break;
            }
            events += next.events.len();
            batch.push(next);
        }
        commit(&pool, batch).await;
    }
}

/// Commits `batch` in one statement; when that fails, each append on its own.
async fn commit(pool: &PgPool, batch: Vec<Append>) {
    let (current, stale): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|append| append.basis.is_current());
    for append in stale {
        let _ = append.reply.send(Err(AppendError::Conflict));
    }
    if current.is_empty() {
        return;
    }
    metrics::histogram!("herald_append_batch_commands").record(current.len() as f64);
    match store(pool, &current).await {
        Ok(()) => {
            for append in current {
                settle(append, Ok(()));
            }
        }
        Err(err) if crate::error::is_unavailable(&err) => {
            tracing::warn!(%err, "cannot append a batch of events");
            for append in current {
                settle(append, Err(AppendError::Unavailable));
            }
        }
        Err(err) if current.len() == 1 => {
            let append = current.into_iter().next().expect("one append");
            settle(append, Err(refused(err)));
        }
        Err(_) => {
            for append in current {
                if !append.basis.is_current() {
                    let _ = append.reply.send(Err(AppendError::Conflict));
                    continue;
                }
                let outcome = store(pool, std::slice::from_ref(&append))
                    .await
                    .map_err(refused);
                settle(append, outcome);
            }
        }
    }
}

/// Stores `appends` in one statement; when some of them change accounts, that
/// statement and the account writes, in order, in one transaction.
async fn store(pool: &PgPool, appends: &[Append]) -> Result<(), sqlx::Error> {
    if appends.iter().all(|append| append.account.is_none()) {
        return statement(appends).execute(pool).await.map(drop);
    }
    let mut tx = pool.begin().await?;
    statement(appends).execute(&mut *tx).await?;
    for account in appends.iter().filter_map(|append| append.account.as_ref()) {
        account.write(&mut tx).await?;
    }
    tx.commit().await
}

/// Records the outcome on the aggregate's entry, then tells the command.
fn settle(append: Append, outcome: Result<(), AppendError>) {
    match &outcome {
        Ok(()) => append.basis.committed(append.last_sequence()),
        Err(_) => append.basis.discard(),
    }
    let _ = append.reply.send(outcome);
}

/// Sorts the error of an append that was tried on its own.
fn refused(err: sqlx::Error) -> AppendError {
    if crate::error::is_unavailable(&err) {
        return AppendError::Unavailable;
    }
    match &err {
        // The aggregate's version, or the idempotency key, was taken first;
        // a rule a unique index keeps is the store's refusal instead.
        sqlx::Error::Database(db)
            if db.code().as_deref() == Some("23505")
                && crate::error::rule_of_constraint(&err).is_none() =>
        {
            AppendError::Conflict
        }
        _ => AppendError::Store(err),
    }
}

/// The [`APPEND`] statement for `appends`.
fn statement(appends: &[Append]) -> Query<'_, Postgres, PgArguments> {
    let events: usize = appends.iter().map(|append| append.events.len()).sum();
    let mut aggregate_types = Vec::with_capacity(events);
    let mut aggregate_ids = Vec::with_capacity(events);
    let mut sequences = Vec::with_capacity(events);
    let mut event_types = Vec::with_capacity(events);
    let mut event_versions = Vec::with_capacity(events);
    let mut payloads = Vec::with_capacity(events);
    let mut metadata = Vec::with_capacity(events);
    let mut snapshots = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for append in appends {
        for (offset, (event_type, event_version, payload)) in append.events.iter().enumerate() {
            aggregate_types.push(append.aggregate_type);
            aggregate_ids.push(append.aggregate_id.as_str());
            sequences.push((append.first_sequence + offset as u64) as i64);
            event_types.push(event_type.as_str());
            event_versions.push(event_version.as_str());
            payloads.push(payload.as_str());
            metadata.push(append.metadata.as_str());
        }
        if let Some(snapshot) = &append.snapshot {
            snapshots.0.push(append.aggregate_type);
            snapshots.1.push(append.aggregate_id.as_str());
            snapshots.2.push(append.last_sequence() as i64);
            snapshots.3.push(snapshot.as_str());
        }
    }
    sqlx::query(APPEND)
        .bind(aggregate_types)
        .bind(aggregate_ids)
        .bind(sequences)
        .bind(event_types)
        .bind(event_versions)
        .bind(payloads)
        .bind(metadata)
        .bind(snapshots.0)
        .bind(snapshots.1)
        .bind(snapshots.2)
        .bind(snapshots.3)
        .bind(COMMIT_CHANNEL)
}
