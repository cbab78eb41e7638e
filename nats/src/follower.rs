//! The one loop that follows the log for every durable follower: projections
//! and process managers.
//!
//! A follower has a checkpoint (a log position) in Postgres under its name.
//! The followers of one process share one [`Source`]: one ephemeral ordered
//! consumer of the deployment's stream, whose messages are decoded once and
//! handed to every follower in chunks. A follower brings its checkpoint up to
//! the last position it was handed; positions are dense, so whatever it was
//! not handed (a reconnect, a follower that fell behind the others, a restart)
//! is read from the Postgres log ([`log::missing`]), and when the stream goes
//! quiet the loop looks at the log's head itself. Nothing is acknowledged to
//! NATS: the checkpoint in Postgres is the only record of how far a follower
//! got. Failures of NATS or Postgres are waited out with growing pauses.
//! Entries that keep failing are set aside as dead letters ([`checkpoint`]).
//!
//! What kind of follower it is, and so how the checkpoint moves, is named by
//! the trait it implements:
//!
//! - [`TransactionalFollower`]: its effects are writes in the transaction
//!   that moves its checkpoint, so each entry takes effect exactly once and
//!   the follower is a pure function of the log, safe to rebuild and replay.
//!   Any number of workers may run; they take turns on the checkpoint row.
//!   Driven by [`Source::follow_in_transaction`].
//! - [`EffectFollower`]: its effects happen outside the checkpoint's
//!   transaction (commands, calls to a provider), so each one must be
//!   idempotent: after a crash an entry may be acted on again. One instance per
//!   database is active, the holder of its advisory lock; the others stand by.
//!   Driven by [`Source::follow_effects`].

pub mod checkpoint;

use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::locks::{self, Commit};
use crate::log::{self, LogEntry};
use crate::{trace, Topology};

/// How long the loop waits for entries before looking at the log itself.
const IDLE_CATCH_UP: Duration = Duration::from_secs(1);
/// Most messages the shared consumer decodes and hands on as one chunk.
const CHUNK: usize = 256;
/// Chunks a follower may fall behind the shared consumer before it misses
/// some, which it then reads from the Postgres log. With [`CHUNK`], it bounds
/// the entries held for the slowest follower of a process.
const CHUNKS_BUFFERED: usize = 64;
/// How often a transactional follower tries an entry before it is set aside
/// as a dead letter.
const ATTEMPTS: i32 = 3;

/// Anything that follows the log with a checkpoint of its own.
pub trait Follower: Sync {
    /// Most entries taken from the stream, read from the log or applied at once.
    const BATCH: usize;

    /// The name of its checkpoint and dead letters.
    fn name(&self) -> &str;

    /// Whether this entry's event concerns it; the checkpoint moves past the
    /// others without a write of their own.
    fn follows(&self, entry: &LogEntry) -> bool;
}

/// A follower whose every effect is a write in the transaction that moves its
/// checkpoint: a read model.
pub trait TransactionalFollower: Follower {
    /// Applies log entries in order inside the caller's transaction. Entries
    /// of events it does not follow change nothing.
    fn apply(
        &self,
        tx: &mut PgConnection,
        entries: &[LogEntry],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// A follower that acts on entries outside the checkpoint's transaction, each
/// action idempotent: a process manager.
pub trait EffectFollower: Follower {
    /// Why acting on an entry has to wait: Postgres or a provider is away.
    type Later: std::error::Error + Send + Sync + 'static;

    /// The advisory lock ([`locks`]) held by the active instance.
    const LOCK: i64;

    /// Acts on one entry it follows.
    fn react(
        &self,
        entry: &LogEntry,
    ) -> impl Future<Output = Result<(), ReactError<Self::Later>>> + Send;
}

/// Why an entry could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The payload is not the event its type says.
    #[error("cannot decode {event_type} at position {position}: {source}")]
    Decode {
        /// The entry's event type.
        event_type: String,
        /// The entry's position.
        position: i64,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The read model's SQL failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The entry adds a row the read model already holds, which a rebuild
    /// finds before any SQL would.
    #[error("the entry at position {position} adds {row}, which the read model already holds")]
    Duplicate {
        /// The entry's position.
        position: i64,
        /// The row, by what it is and its key.
        row: String,
    },
}

/// Why an entry could not be acted on.
#[derive(Debug, thiserror::Error)]
pub enum ReactError<E> {
    /// Worth trying again later: Postgres or the provider is away, or others
    /// kept winning the race for an aggregate.
    #[error(transparent)]
    Later(E),
    /// Will fail the same way every time: set aside for a person to look at.
    #[error("{0}")]
    Never(String),
}

/// Why a follower of the stream stopped consuming for a while.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// NATS is away, or refused the consumer.
    #[error("nats: {0}")]
    Nats(#[from] async_nats::Error),
    /// Postgres is away.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// An effect follower's entry has to wait ([`ReactError::Later`]).
    #[error(transparent)]
    Later(Box<dyn std::error::Error + Send + Sync>),
    /// The consumer's messages stopped: it is created again.
    #[error("the consumer's message stream ended")]
    StreamEnded,
}

/// Where the followers of one process read the log: the deployment's stream,
/// taken by one consumer for them all, and the Postgres log that fills what
/// the stream skipped. Clones share the consumer.
#[derive(Clone)]
pub struct Source {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    jetstream: jetstream::Context,
    topology: Topology,
    /// The decoded chunks of the stream, once a follower asked for them.
    chunks: OnceLock<broadcast::Sender<Chunk>>,
}

/// Entries decoded once from consecutive messages, in stream order.
type Chunk = Arc<[LogEntry]>;

impl Source {
    /// The log of the deployment named by `topology`, kept in `pool`.
    pub fn new(pool: PgPool, client: async_nats::Client, topology: Topology) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                jetstream: jetstream::new(client),
                topology,
                chunks: OnceLock::new(),
            }),
        }
    }

    /// The pool the log is read from.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The chunks the shared consumer decodes from now on, its task started
    /// with the first follower that asks. The task ends once every clone of
    /// this source is gone.
    fn subscribe(&self) -> broadcast::Receiver<Chunk> {
        self.shared
            .chunks
            .get_or_init(|| {
                let (sender, _) = broadcast::channel(CHUNKS_BUFFERED);
                let consumer = SharedConsumer {
                    jetstream: self.shared.jetstream.clone(),
                    topology: self.shared.topology.clone(),
                    sender: sender.clone(),
                    source: Arc::downgrade(&self.shared),
                };
                tokio::spawn(consumer.run());
                sender
            })
            .subscribe()
    }

    /// Keeps a transactional follower up to date until `shutdown` completes.
    pub async fn follow_in_transaction<F: TransactionalFollower>(
        &self,
        follower: &F,
        shutdown: impl Future<Output = ()>,
    ) {
        self.run(&InTransaction(follower), shutdown).await;
    }

    /// Waits to become the active instance of an effect follower and follows
    /// until `shutdown` completes; an entry that has to wait is tried again.
    pub async fn follow_effects<F: EffectFollower>(
        &self,
        follower: &F,
        shutdown: impl Future<Output = ()>,
    ) {
        self.run(&Effects(follower), shutdown).await;
    }

    /// Consumes until `shutdown` completes, waiting out failures with growing
    /// pauses.
    async fn run<K: Kind>(&self, kind: &K, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                outcome = self.consume(kind) => match outcome {
                    Ok(()) => failures = 0,
                    Err(err) => {
                        failures = (failures + 1).min(6);
                        tracing::warn!(projection = kind.name(), %err, "follower paused");
                    }
                },
            }
            let pause = K::LONGEST_PAUSE.min(Duration::from_millis(50 << failures));
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Follows for as long as nothing fails; `Ok` when it may not follow now.
    async fn consume<K: Kind>(&self, kind: &K) -> Result<(), FollowError> {
        let pool = self.pool();
        let Some(mut hold) = kind.start(pool).await? else {
            return Ok(());
        };
        let mut chunks = self.subscribe();
        tracing::info!(projection = kind.name(), "follower following the log");
        self.catch_up(kind, &mut hold).await?;
        loop {
            let chunk = match tokio::time::timeout(IDLE_CATCH_UP, chunks.recv()).await {
                Ok(Ok(chunk)) => chunk,
                // What it missed is read from the log with the next chunk.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(FollowError::StreamEnded)
                }
                Err(_idle) => {
                    self.catch_up(kind, &mut hold).await?;
                    continue;
                }
            };
            // Whatever else arrived meanwhile joins the batch.
            let mut entries = chunk.to_vec();
            while entries.len() < K::BATCH {
                match chunks.try_recv() {
                    Ok(chunk) => entries.extend_from_slice(&chunk),
                    Err(_) => break,
                }
            }
            if let Some(target) = entries.last().map(|entry| entry.position) {
                kind.up_to(pool, &mut hold, target, entries).await?;
            }
        }
    }

    /// Follows whatever the log holds beyond the checkpoint, read from
    /// Postgres: entries sequenced while the follower was away, or that NATS
    /// has not delivered yet.
    async fn catch_up<K: Kind>(&self, kind: &K, hold: &mut K::Hold) -> Result<(), FollowError> {
        let head = log::head(self.pool()).await?;
        kind.up_to(self.pool(), hold, head, Vec::new()).await
    }
}

/// The one consumer of the stream that a [`Source`] shares between its
/// followers: it decodes each message once and hands the entries on in
/// chunks, for as long as the source exists.
struct SharedConsumer {
    jetstream: jetstream::Context,
    topology: Topology,
    sender: broadcast::Sender<Chunk>,
    source: Weak<Shared>,
}

impl SharedConsumer {
    /// Consumes until the source is gone, waiting out failures with growing
    /// pauses; followers meanwhile read the Postgres log themselves.
    async fn run(self) {
        let mut failures = 0u32;
        while self.source.strong_count() > 0 {
            match self.consume().await {
                Ok(()) => return,
                Err(err) => {
                    failures = (failures + 1).min(6);
                    tracing::warn!(%err, "the followers' consumer paused");
                }
            }
            tokio::time::sleep(Duration::from_millis(50 << failures)).await;
        }
    }

    /// Hands on the stream's new messages; `Ok` once the source is gone.
    async fn consume(&self) -> Result<(), FollowError> {
        let mut messages = self
            .topology
            .new_entries(&self.jetstream)
            .await?
            .ready_chunks(CHUNK);
        loop {
            let next = tokio::time::timeout(IDLE_CATCH_UP, messages.next()).await;
            if self.source.strong_count() == 0 {
                return Ok(());
            }
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Err(FollowError::StreamEnded),
                Err(_idle) => continue,
            };
            let entries: Chunk = chunk
                .into_iter()
                .filter_map(|item| match item {
                    Ok(message) => match LogEntry::from_json(&message.payload) {
                        Ok(entry) => Some(entry),
                        Err(err) => {
                            // The log in Postgres fills whatever this message held.
                            tracing::error!(%err, "undecodable event message");
                            None
                        }
                    },
                    // Missed heartbeats and reconnects are transient: keep going.
                    Err(err) => {
                        tracing::debug!(%err, "the followers' consumer: pull error");
                        None
                    }
                })
                .collect();
            if !entries.is_empty() {
                // No follower listening right now is no failure.
                let _ = self.sender.send(entries);
            }
        }
    }
}

/// How one kind of follower starts and moves its checkpoint.
trait Kind: Sync {
    /// Most entries at once.
    const BATCH: usize;
    /// The longest pause between two tries to follow.
    const LONGEST_PAUSE: Duration;
    /// What the follower holds while it may follow.
    type Hold: Send;

    fn name(&self) -> &str;

    /// Gets ready to follow; `None` when it may not follow now.
    async fn start(&self, pool: &PgPool) -> Result<Option<Self::Hold>, FollowError>;

    /// Follows every entry after the checkpoint up to `target`: the entries
    /// `received` when they are exactly the ones missing, else read from the
    /// log in batches.
    async fn up_to(
        &self,
        pool: &PgPool,
        hold: &mut Self::Hold,
        target: i64,
        received: Vec<LogEntry>,
    ) -> Result<(), FollowError>;
}

/// A [`TransactionalFollower`] driven by the loop.
struct InTransaction<'a, F>(&'a F);

impl<F: TransactionalFollower> Kind for InTransaction<'_, F> {
    const BATCH: usize = F::BATCH;
    const LONGEST_PAUSE: Duration = Duration::from_millis(50 << 6);
    type Hold = ();

    fn name(&self) -> &str {
        self.0.name()
    }

    async fn start(&self, pool: &PgPool) -> Result<Option<()>, FollowError> {
        checkpoint::ensure(pool, self.name()).await?;
        Ok(Some(()))
    }

    /// Each batch is applied in one transaction that moves the checkpoint,
    /// with the checkpoint row locked; entries received that it does not
    /// follow only move the checkpoint, in one statement.
    async fn up_to(
        &self,
        pool: &PgPool,
        _hold: &mut (),
        target: i64,
        mut received: Vec<LogEntry>,
    ) -> Result<(), FollowError> {
        let name = self.name();
        if let Some(after) = unfollowed_stretch(self.0, &received, target) {
            if checkpoint::skip(pool, name, after, target).await? {
                return Ok(());
            }
        }
        let mut conn = pool.acquire().await?;
        loop {
            let mut tx = begin_batch(&mut conn).await?;
            let from = checkpoint::lock(&mut tx, name).await?;
            if target <= from {
                tx.commit().await?;
                return Ok(());
            }
            let limit = F::BATCH as i64;
            let entries = log::missing(&mut *tx, from, target, &mut received, limit).await?;
            let Some(upto) = entries.last().map(|entry| entry.position) else {
                // Not sequenced in this database: nothing to apply yet.
                tx.commit().await?;
                return Ok(());
            };
            let _traces = self.traces(&entries);
            match self.apply_batch_traced(&mut tx, &entries).await {
                Ok(()) => {
                    checkpoint::advance(&mut *tx, name, upto).await?;
                    tx.commit().await?;
                }
                Err(ApplyError::Sql(err)) if is_transient(&err) => return Err(err.into()),
                Err(err) => {
                    tx.rollback().await?;
                    tracing::warn!(projection = name, %err, "batch failed; applying one entry at a time");
                    self.apply_one_by_one(&mut conn, entries).await?;
                }
            }
        }
    }
}

impl<F: TransactionalFollower> InTransaction<'_, F> {
    /// A span for each traced entry it follows, a child of the span of the
    /// command that stored it, held while the entry is applied and committed.
    fn traces(&self, entries: &[LogEntry]) -> Vec<tracing::Span> {
        entries
            .iter()
            .filter(|entry| self.0.follows(entry))
            .map(|entry| trace::of_entry("project", Some(self.name()), entry))
            .filter(|span| !span.is_disabled())
            .collect()
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
            projection = self.name(),
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
            self.0.apply(conn, entries).await
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
            projection = self.name(),
            position = entry.position,
            event_type = entry.event_type,
            correlation_id = entry.correlation_id(),
        );
        self.0
            .apply(conn, std::slice::from_ref(entry))
            .instrument(span)
            .await
    }

    /// Applies entries in their own transactions, so that a poison entry is set
    /// aside as a dead letter after [`ATTEMPTS`] tries and the rest go on.
    async fn apply_one_by_one(
        &self,
        conn: &mut PgConnection,
        entries: Vec<LogEntry>,
    ) -> Result<(), FollowError> {
        let name = self.name();
        for entry in entries {
            let _traces = self.traces(std::slice::from_ref(&entry));
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut tx = begin_batch(conn).await?;
                if checkpoint::lock(&mut tx, name).await? >= entry.position {
                    tx.commit().await?;
                    break;
                }
                match self.apply_traced(&mut tx, &entry).await {
                    Ok(()) => {
                        checkpoint::advance(&mut *tx, name, entry.position).await?;
                        tx.commit().await?;
                        break;
                    }
                    Err(ApplyError::Sql(err)) if is_transient(&err) => return Err(err.into()),
                    Err(err) if attempt < ATTEMPTS => {
                        tx.rollback().await?;
                        tracing::warn!(projection = name, position = entry.position, attempt, %err, "entry failed");
                    }
                    Err(err) => {
                        tx.rollback().await?;
                        let mut tx = begin_batch(conn).await?;
                        checkpoint::lock(&mut tx, name).await?;
                        checkpoint::bury(&mut *tx, name, &entry, &err.to_string(), attempt).await?;
                        checkpoint::advance(&mut *tx, name, entry.position).await?;
                        tx.commit().await?;
                        tracing::error!(
                            projection = name,
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

/// Where the checkpoint must stand for `received` to be skipped: when they
/// are a stretch of the log up to `target` without a gap, none of them
/// followed, the position before the first.
fn unfollowed_stretch(follower: &impl Follower, received: &[LogEntry], target: i64) -> Option<i64> {
    let first = received.first()?.position;
    let dense = received
        .iter()
        .enumerate()
        .all(|(i, entry)| entry.position == first + i as i64);
    let unfollowed = received.iter().all(|entry| !follower.follows(entry));
    (dense && unfollowed && received.last()?.position == target).then_some(first - 1)
}

/// An [`EffectFollower`] driven by the loop.
struct Effects<'a, F>(&'a F);

impl<F: EffectFollower> Kind for Effects<'_, F> {
    const BATCH: usize = F::BATCH;
    /// A standby tries to become active at least this often.
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    /// The connection holding the lock. The checkpoint moves only through it,
    /// so an instance that lost its lock cannot move it.
    type Hold = PgConnection;

    fn name(&self) -> &str {
        self.0.name()
    }

    async fn start(&self, pool: &PgPool) -> Result<Option<PgConnection>, FollowError> {
        let Some(mut lock) = locks::try_hold(pool, F::LOCK).await? else {
            return Ok(None);
        };
        // Its effects are idempotent, so a checkpoint move a crash of
        // Postgres loses only acts on entries again: its commits need not
        // wait for the disk.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut lock)
            .await?;
        checkpoint::ensure(&mut lock, self.name()).await?;
        Ok(Some(lock))
    }

    /// The checkpoint moves after each entry acted on, and past an entry that
    /// has to wait only up to the one before it.
    async fn up_to(
        &self,
        pool: &PgPool,
        lock: &mut PgConnection,
        target: i64,
        mut received: Vec<LogEntry>,
    ) -> Result<(), FollowError> {
        let name = self.name();
        let mut at = checkpoint::read(&mut *lock, name).await?;
        while at < target {
            let limit = F::BATCH as i64;
            let entries = log::missing(pool, at, target, &mut received, limit).await?;
            let Some(last) = entries.last().map(|entry| entry.position) else {
                // Not sequenced in this database yet.
                return Ok(());
            };
            for entry in entries.iter().filter(|entry| self.0.follows(entry)) {
                let traced = trace::of_entry("react", Some(name), entry);
                match self.0.react(entry).instrument(traced).await {
                    Ok(()) => {}
                    Err(ReactError::Later(err)) => {
                        checkpoint::advance(&mut *lock, name, entry.position - 1).await?;
                        return Err(FollowError::Later(Box::new(err)));
                    }
                    Err(ReactError::Never(error)) => {
                        tracing::error!(
                            projection = name,
                            position = entry.position,
                            event_type = entry.event_type,
                            aggregate_id = entry.aggregate_id,
                            error,
                            "cannot act on an event; set aside as a dead letter"
                        );
                        checkpoint::bury(&mut *lock, name, entry, &error, 1).await?;
                    }
                }
                checkpoint::advance(&mut *lock, name, entry.position).await?;
            }
            checkpoint::advance(&mut *lock, name, last).await?;
            at = last;
        }
        Ok(())
    }
}

/// Opens a batch's transaction. Its commit does not wait for the disk: the
/// rows and the checkpoint commit together, so a batch that a Postgres crash
/// loses is applied again from the log when the follower starts, and the
/// disk's syncs are left to the commands, whose events are the record.
async fn begin_batch(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    locks::begin_without_events(conn, Commit::Unsynced).await
}

/// Whether a failure is Postgres being away rather than a poison entry.
fn is_transient(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows entries at even positions.
    struct Evens;

    impl Follower for Evens {
        const BATCH: usize = 10;

        fn name(&self) -> &str {
            "evens"
        }

        fn follows(&self, entry: &LogEntry) -> bool {
            entry.position % 2 == 0
        }
    }

    fn entries(positions: &[i64]) -> Vec<LogEntry> {
        positions
            .iter()
            .map(|&position| LogEntry {
                position,
                event_id: position,
                aggregate_type: "Chat".into(),
                aggregate_id: "chat".into(),
                sequence: position,
                event_type: "MessageSent".into(),
                event_version: "1".into(),
                payload: serde_json::Value::Null,
                metadata: serde_json::Value::Null,
                recorded_at: chrono::Utc::now(),
            })
            .collect()
    }

    #[test]
    fn only_a_stretch_without_gaps_of_entries_it_does_not_follow_is_skipped() {
        assert_eq!(unfollowed_stretch(&Evens, &entries(&[7]), 7), Some(6));
        assert_eq!(unfollowed_stretch(&Evens, &entries(&[5, 6, 7]), 7), None);
        assert_eq!(unfollowed_stretch(&Evens, &entries(&[5, 7]), 7), None);
        assert_eq!(unfollowed_stretch(&Evens, &entries(&[5]), 7), None);
        assert_eq!(unfollowed_stretch(&Evens, &entries(&[]), 7), None);
    }
}
