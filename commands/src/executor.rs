use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::booking::Booking;
use domain::chat::Chat;
use domain::payment::Payment;
use domain::user::User;
use domain::DomainError;
use herald_nats::trace::TARGET;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::accounts::AccountWrite;
use crate::append::{Append, AppendError, Appender};
use crate::cache::{Basis, Cache, Slot};
use crate::idempotency::{self, Recorded};
use crate::load;
use crate::{CommandError, ConsistencyToken, Metadata};

/// How many times a command is decided afresh after losing a race on its aggregate.
const ATTEMPTS: u32 = 8;
/// Aggregates of each type kept in memory: between this many and twice as many.
const CACHED: usize = 4096;

/// An aggregate Herald stores, and where this process keeps those recently used.
pub trait Stored: Aggregate<Error = DomainError, Services = ()>
where
    Self::Command: Clone,
{
    /// Loaded from a snapshot taken every this many events, if at all.
    const SNAPSHOT_EVERY: Option<u64> = None;

    /// The aggregates of this type in memory.
    fn cache(write_side: &WriteSide) -> &Cache<Self>;
}

impl Stored for Chat {
    const SNAPSHOT_EVERY: Option<u64> = Some(100);

    fn cache(write_side: &WriteSide) -> &Cache<Self> {
        &write_side.chats
    }
}

impl Stored for Booking {
    fn cache(write_side: &WriteSide) -> &Cache<Self> {
        &write_side.bookings
    }
}

impl Stored for Payment {
    fn cache(write_side: &WriteSide) -> &Cache<Self> {
        &write_side.payments
    }
}

impl Stored for User {
    /// Every notification read is an event, so a user's history keeps growing.
    const SNAPSHOT_EVERY: Option<u64> = Some(100);

    fn cache(write_side: &WriteSide) -> &Cache<Self> {
        &write_side.users
    }
}

/// What an accepted command left behind.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// The aggregate the command went to.
    pub aggregate_id: Uuid,
    /// The aggregate's version afterwards: the sequence of its last event.
    pub version: u64,
    /// The events the command produced; empty when it changed nothing.
    pub events: Vec<A::Event>,
    /// True when this is the stored outcome of an earlier request with the same
    /// idempotency key, not a new decision.
    pub replayed: bool,
}

impl<A: Aggregate> Committed<A> {
    /// What a read must wait for to see this command's effect.
    pub fn token(&self) -> ConsistencyToken {
        ConsistencyToken {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: self.aggregate_id.to_string(),
            version: self.version,
        }
    }
}

/// The id of an aggregate a command creates: chosen by the client, who may
/// have used it before, or minted here for this command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewId {
    /// Given in the request.
    Chosen(Uuid),
    /// Made for this command; nobody can have used it yet.
    Minted(Uuid),
}

impl NewId {
    /// `chosen`, or a new id when the client chose none.
    pub fn of(chosen: Option<Uuid>) -> Self {
        chosen.map_or_else(|| Self::Minted(Uuid::now_v7()), Self::Chosen)
    }

    /// The id.
    pub fn id(self) -> Uuid {
        match self {
            Self::Chosen(id) | Self::Minted(id) => id,
        }
    }
}

/// Executes commands against the Postgres event store.
///
/// Commands on one aggregate in this process take turns on its cached state
/// (see [`crate::cache`]) instead of racing each other into version
/// conflicts, and commands that arrive together are committed together (see
/// [`crate::append`]); across processes the version check of the event store
/// (and the retry below) still decides.
pub struct WriteSide {
    pool: PgPool,
    chats: Cache<Chat>,
    bookings: Cache<Booking>,
    payments: Cache<Payment>,
    users: Cache<User>,
    appender: Appender,
}

impl WriteSide {
    /// A write side on the given pool; the schema must already be migrated.
    /// Its batch task runs on the current Tokio runtime until it is dropped.
    pub fn new(pool: PgPool) -> Self {
        Self {
            chats: Cache::new(CACHED),
            bookings: Cache::new(CACHED),
            payments: Cache::new(CACHED),
            users: Cache::new(CACHED),
            appender: Appender::start(pool.clone()),
            pool,
        }
    }

    /// The pool the event store writes through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Loads an aggregate's current state, e.g. to put facts about it into a
    /// command for another aggregate.
    pub async fn load<A: Stored>(&self, id: Uuid) -> Result<A, CommandError>
    where
        A::Command: Clone,
    {
        let (aggregate, _) = load::load(&self.pool, id, A::SNAPSHOT_EVERY.is_some()).await?;
        Ok(aggregate)
    }

    /// Decides `command` on aggregate `id` and commits its events with `metadata`.
    ///
    /// A lost race (another command committed the same version first) is retried
    /// from a fresh load; only a run of lost races ends in [`CommandError::Conflict`].
    /// With an idempotency key, a key seen before answers with what it produced the
    /// first time, and nothing new is stored.
    pub async fn execute<A: Stored>(
        &self,
        id: Uuid,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, CommandError>
    where
        A::Command: Clone,
    {
        let result = self
            .decide_and_commit::<A>(id, false, command, metadata, None)
            .await;
        count(&result);
        result
    }

    /// [`WriteSide::execute`] for a command that creates aggregate `new`. An
    /// id minted here has no history to load; were it ever taken after all,
    /// the store's version check would catch it and the command would be
    /// decided again on what the log holds.
    pub async fn create<A: Stored>(
        &self,
        new: NewId,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, CommandError>
    where
        A::Command: Clone,
    {
        let minted = matches!(new, NewId::Minted(_));
        let result = self
            .decide_and_commit::<A>(new.id(), minted, command, metadata, None)
            .await;
        count(&result);
        result
    }

    /// Decides `command` on the user whose account `account` changes, and
    /// commits its events and that change in one transaction: the personal
    /// data goes to the `accounts` table, never to the log. Opening an
    /// account creates its user under an id minted for it; an address another
    /// account holds refuses the command ([`DomainError::EmailTaken`]).
    pub async fn execute_on_account(
        &self,
        command: <User as cqrs_es::Aggregate>::Command,
        metadata: &Metadata,
        account: AccountWrite,
    ) -> Result<Committed<User>, CommandError> {
        let minted = matches!(account, AccountWrite::Open { .. });
        let result = self
            .decide_and_commit::<User>(account.user_id(), minted, command, metadata, Some(&account))
            .await;
        count(&result);
        result
    }

    /// Decides `command` and commits its events, as [`WriteSide::execute`]
    /// says; `minted`: the id was minted for this command, so there is
    /// nothing to load before the first attempt; `account`: the personal
    /// data written with the events. Its span is the `command` of a trace,
    /// and the events carry its context on to everything that follows them.
    #[tracing::instrument(
        level = "debug",
        target = TARGET,
        name = "command",
        skip_all,
        fields(aggregate = A::TYPE, aggregate_id = %id)
    )]
    async fn decide_and_commit<A: Stored>(
        &self,
        id: Uuid,
        minted: bool,
        command: A::Command,
        metadata: &Metadata,
        account: Option<&AccountWrite>,
    ) -> Result<Committed<A>, CommandError>
    where
        A::Command: Clone,
    {
        let stored_metadata = serde_json::to_string(&metadata.to_map())
            .map_err(|err| CommandError::Internal(err.into()))?;
        for attempt in 1..=ATTEMPTS {
            if let Some(idempotency) = &metadata.idempotency {
                if let Some(recorded) =
                    idempotency::find(&self.pool, metadata.actor.user_id, &idempotency.key).await?
                {
                    return self.replay(recorded, &idempotency.request_hash).await;
                }
            }
            let entry = A::cache(self).entry(id);
            let mut slot = entry.slot.lock().await;
            let generation = entry.progress.borrow().generation;
            let basis = Basis {
                progress: entry.progress.clone(),
                generation,
            };
            if slot.generation != Some(generation) {
                let (aggregate, version) = if minted && attempt == 1 {
                    (A::default(), 0)
                } else {
                    load::load(&self.pool, id, A::SNAPSHOT_EVERY.is_some()).await?
                };
                *slot = Slot {
                    aggregate,
                    version,
                    generation: Some(generation),
                };
                basis.committed(slot.version);
            }
            let version = slot.version;
            let sink = EventSink::default();
            let decided = slot.aggregate.handle(command.clone(), &(), &sink).await;
            let events = sink.collect().await;
            if decided.is_err() || events.is_empty() {
                // Decided on a state that may not be committed yet, or that
                // another process has moved past: the answer holds only once
                // the state is committed and still the latest.
                drop(slot);
                if !entry.settled(generation, version).await {
                    continue;
                }
                if stored_version(&self.pool, A::TYPE, id).await? != version {
                    basis.discard();
                    continue;
                }
                decided.map_err(CommandError::Rejected)?;
                return Ok(Committed {
                    aggregate_id: id,
                    version,
                    events,
                    replayed: false,
                });
            }
            // From here until the append is queued nothing awaits, so a
            // request dropped half-way leaves the cached state as it was or
            // its events queued, never ahead of the log with nothing queued.
            let rows = events
                .iter()
                .map(|event| {
                    Ok((
                        event.event_type(),
                        event.event_version(),
                        serde_json::to_string(event)?,
                    ))
                })
                .collect::<Result<Vec<_>, serde_json::Error>>()
                .map_err(|err| CommandError::Internal(err.into()))?;
            for event in &events {
                slot.aggregate.apply(event.clone());
            }
            slot.version += events.len() as u64;
            let snapshot = A::SNAPSHOT_EVERY
                .filter(|&every| snapshot_due(every, version, slot.version))
                .and_then(|_| {
                    serde_json::to_string(&slot.aggregate)
                        .inspect_err(
                            |err| tracing::warn!(aggregate = A::TYPE, %id, %err, "cannot snapshot"),
                        )
                        .ok()
                });
            let (reply, outcome) = oneshot::channel();
            self.appender.queue(Append {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_string(),
                first_sequence: version + 1,
                events: rows,
                metadata: stored_metadata.clone(),
                snapshot,
                idempotency: metadata
                    .idempotency
                    .as_ref()
                    .map(|key| (metadata.actor.user_id, key.key.clone())),
                account: account.cloned(),
                basis: basis.clone(),
                reply,
            });
            let last = slot.version;
            drop(slot);
            let commit = tracing::debug_span!(target: TARGET, "commit");
            let outcome = outcome.instrument(commit).await.unwrap_or_else(|_| {
                // The batch task is gone, its outcome unknown.
                basis.discard();
                Err(AppendError::Unavailable)
            });
            match outcome {
                Ok(()) => {
                    return Ok(Committed {
                        aggregate_id: id,
                        version: last,
                        events,
                        replayed: false,
                    })
                }
                Err(AppendError::Conflict) => {
                    tracing::debug!(aggregate = A::TYPE, %id, attempt, "version conflict, retrying");
                    metrics::counter!("herald_command_conflict_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                    let jitter = rand::thread_rng().gen_range(0..=u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(AppendError::Unavailable) => {
                    return Err(CommandError::Unavailable(
                        "the event store did not answer".into(),
                    ))
                }
                Err(AppendError::Store(err)) => return Err(err.into()),
            }
        }
        Err(CommandError::Conflict)
    }

    /// What an earlier request with the same idempotency key committed, if there
    /// was one. A caller with side effects before [`WriteSide::execute`], such
    /// as asking a payment provider, asks first so that a repeated request is
    /// answered without repeating them.
    pub async fn recorded<A: Stored>(
        &self,
        metadata: &Metadata,
    ) -> Result<Option<Committed<A>>, CommandError>
    where
        A::Command: Clone,
    {
        let Some(idempotency) = &metadata.idempotency else {
            return Ok(None);
        };
        match idempotency::find(&self.pool, metadata.actor.user_id, &idempotency.key).await? {
            Some(recorded) => self
                .replay(recorded, &idempotency.request_hash)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// The answer an earlier request with the same idempotency key got.
    async fn replay<A: Stored>(
        &self,
        recorded: Recorded,
        request_hash: &str,
    ) -> Result<Committed<A>, CommandError>
    where
        A::Command: Clone,
    {
        if recorded.request_hash != request_hash || recorded.aggregate_type != A::TYPE {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let aggregate_id = recorded
            .aggregate_id
            .parse()
            .map_err(|err: uuid::Error| CommandError::Internal(err.into()))?;
        let events = idempotency::recorded_events(&self.pool, &recorded).await?;
        Ok(Committed {
            aggregate_id,
            version: recorded.last_sequence as u64,
            events,
            replayed: true,
        })
    }
}

/// Whether an aggregate going from version `before` to `after` is due a
/// snapshot: every `every` events while it is short, then every eighth of its
/// length, so that a long aggregate's snapshots cost the same share of each
/// event however long it grows, and it still loads with at most that many
/// events after its snapshot.
fn snapshot_due(every: u64, before: u64, after: u64) -> bool {
    let eighth = after.checked_ilog2().map_or(0, |log| (1 << log) / 8);
    let step = every.max(eighth);
    before / step != after / step
}

/// The version of aggregate `id` in the store: the sequence of its last event.
async fn stored_version(pool: &PgPool, aggregate_type: &str, id: Uuid) -> Result<u64, sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(id.to_string())
    .fetch_one(pool)
    .await?;
    Ok(version as u64)
}

/// Counts a command by its outcome in `herald_commands_total`.
fn count<A: Stored>(result: &Result<Committed<A>, CommandError>)
where
    A::Command: Clone,
{
    let outcome = match result {
        Ok(committed) if committed.replayed => "replayed",
        Ok(committed) if committed.events.is_empty() => "unchanged",
        Ok(_) => "accepted",
        Err(CommandError::Rejected(_) | CommandError::IdempotencyKeyReused) => "rejected",
        Err(CommandError::Conflict) => "conflict",
        Err(CommandError::Unavailable(_)) => "unavailable",
        Err(CommandError::Internal(_)) => "failed",
    };
    metrics::counter!("herald_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn short_aggregates_are_snapshotted_every_hundred_events_and_long_ones_every_eighth() {
        let due = |before| snapshot_due(100, before, before + 1);
        let taken = |range: std::ops::Range<u64>| {
            range.filter(|&v| due(v)).map(|v| v + 1).collect::<Vec<_>>()
        };
        assert_eq!(taken(0..450), vec![100, 200, 300, 400]);
        // From 65 536 events on, every 8 192.
        assert_eq!(taken(98_000..116_000), vec![98_304, 106_496, 114_688]);
        assert!(snapshot_due(100, 99, 105), "a command crossing the mark");
    }
}
