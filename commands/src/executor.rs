use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, EventStore};
use domain::booking::Booking;
use domain::chat::Chat;
use domain::payment::Payment;
use domain::DomainError;
use herald_nats::log::COMMIT_CHANNEL;
use postgres_es::PostgresEventRepository;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use crate::idempotency::{self, Recorded};
use crate::{CommandError, ConsistencyToken, Metadata};

/// How many times a command is decided afresh after losing a race on its aggregate.
const ATTEMPTS: u32 = 8;
/// Chats are loaded from a snapshot taken every this many events.
const CHAT_SNAPSHOT_EVERY: usize = 100;
/// Commands on one aggregate queue behind one of this many locks in a process.
const LOCK_STRIPES: usize = 1024;

type Store<A> = PersistedEventStore<PostgresEventRepository, A>;

/// An aggregate Herald stores, with the store it lives in.
pub trait Stored: Aggregate<Error = DomainError, Services = ()>
where
    Self::Command: Clone,
{
    /// The event store of this aggregate type.
    fn store(write_side: &WriteSide) -> &Store<Self>;
}

impl Stored for Chat {
    fn store(write_side: &WriteSide) -> &Store<Self> {
        &write_side.chats
    }
}

impl Stored for Booking {
    fn store(write_side: &WriteSide) -> &Store<Self> {
        &write_side.bookings
    }
}

impl Stored for Payment {
    fn store(write_side: &WriteSide) -> &Store<Self> {
        &write_side.payments
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

/// Executes commands against the Postgres event store.
pub struct WriteSide {
    pool: PgPool,
    chats: Store<Chat>,
    bookings: Store<Booking>,
    payments: Store<Payment>,
    /// Commands on one aggregate in this process take turns instead of racing
    /// each other into version conflicts; across processes the optimistic check
    /// of the event store (and the retry below) still decides.
    locks: Box<[Mutex<()>]>,
    /// Raised after every commit; [`WriteSide::announce_commits`] tells the relay.
    committed: Notify,
}

impl WriteSide {
    /// A write side on the given pool; the schema must already be migrated.
    pub fn new(pool: PgPool) -> Self {
        let repo = || PostgresEventRepository::new(pool.clone());
        Self {
            chats: PersistedEventStore::new_snapshot_store(repo(), CHAT_SNAPSHOT_EVERY),
            bookings: PersistedEventStore::new_event_store(repo())
                .with_upcasters(vec![Box::new(domain::upcast::Upcaster)]),
            payments: PersistedEventStore::new_event_store(repo()),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            committed: Notify::new(),
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
        let mut context = A::store(self).load_aggregate(&id.to_string()).await?;
        Ok(std::mem::take(context.aggregate()))
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
        let result = self.decide_and_commit::<A>(id, command, metadata).await;
        let outcome = match &result {
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
        result
    }

    /// [`WriteSide::execute`] without its bookkeeping.
    async fn decide_and_commit<A: Stored>(
        &self,
        id: Uuid,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, CommandError>
    where
        A::Command: Clone,
    {
        let aggregate_id = id.to_string();
        let _turn = self.lock_for(A::TYPE, &aggregate_id).lock().await;
        for attempt in 1..=ATTEMPTS {
            if let Some(idempotency) = &metadata.idempotency {
                if let Some(recorded) =
                    idempotency::find(&self.pool, metadata.actor.user_id, &idempotency.key).await?
                {
                    return self.replay(recorded, &idempotency.request_hash).await;
                }
            }
            let mut context = A::store(self).load_aggregate(&aggregate_id).await?;
            let version = context.current_sequence as u64;
            let sink = EventSink::default();
            context
                .aggregate()
                .handle(command.clone(), &(), &sink)
                .await
                .map_err(CommandError::Rejected)?;
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Committed {
                    aggregate_id: id,
                    version,
                    events,
                    replayed: false,
                });
            }
            match A::store(self)
                .commit(events, context, metadata.to_map())
                .await
            {
                Ok(committed) => {
                    self.committed.notify_one();
                    return Ok(Committed {
                        aggregate_id: id,
                        version: committed.last().map_or(version, |e| e.sequence as u64),
                        events: committed.into_iter().map(|e| e.payload).collect(),
                        replayed: false,
                    });
                }
                Err(cqrs_es::AggregateError::AggregateConflict) => {
                    tracing::debug!(aggregate = A::TYPE, %id, attempt, "version conflict, retrying");
                    metrics::counter!("herald_command_conflict_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                    let jitter = rand::thread_rng().gen_range(1..=5 * u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(err) => return Err(err.into()),
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

    /// Tells the relay, through `NOTIFY` on [`COMMIT_CHANNEL`], that events were
    /// committed, so it wakes at once rather than at its next poll. Runs until
    /// dropped. The notification is sent after the commit, never inside the
    /// writing transaction (which would serialize every commit), and commits that
    /// come while one is being sent share the next.
    pub async fn announce_commits(&self) {
        loop {
            self.committed.notified().await;
            if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(COMMIT_CHANNEL)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(%err, "cannot announce a commit; the relay polls");
            }
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

    fn lock_for(&self, aggregate_type: &str, aggregate_id: &str) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        (aggregate_type, aggregate_id).hash(&mut hasher);
        &self.locks[(hasher.finish() % self.locks.len() as u64) as usize]
    }
}
