//! The relay: the log's single sequencer and its publisher to JetStream.
//!
//! Exactly one relay is active per database, the holder of a Postgres advisory
//! lock; others wait as hot standbys. The active relay runs two loops:
//!
//! * the **sequencer** reads committed events in `(xid, event_id)` order, only
//!   below the transaction-id horizon `event_horizon()`: every transaction
//!   older than that has ended or has declared that it never writes events
//!   (projection batches, rebuilds; see the `event_horizon` migration), so no
//!   event can ever appear behind the cursor. It numbers them densely in
//!   `event_log`, through the very connection that holds the lock, so a relay
//!   that lost its lock can no longer write a position. In the same
//!   transaction it links the entries into the log's hash chains
//!   ([`crate::log::chain`]), so no entry is ever sequenced without its hash;
//!   entries numbered before the chains existed are hashed first, oldest first.
//! * the **publisher** sends sequenced entries to JetStream in position order,
//!   pipelined, each with `Nats-Msg-Id` = its event id and
//!   `Nats-Expected-Last-Msg-Id` = the previous one's, awaiting every PubAck.
//!   The expectation keeps the stream in position order whatever fails; after
//!   any error the publisher resumes from the position carried by the stream's
//!   last message, which also republishes a tail that a crashed NATS lost.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, context::PublishAckFuture};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::jetstream::{headers, headers_of};
use crate::log::chain::Heads;
use crate::log::sequencer::{sequence_batch, SEQUENCE_BATCH};
use crate::log::COMMIT_CHANNEL;
use crate::{locks, log, trace, LogEntry, Topology};

/// Most events in flight to JetStream at once.
const PUBLISH_BATCH: i64 = 1000;
/// Longest sleep between two looks at the log when no commit was announced.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often a standby tries to take over.
const STANDBY_INTERVAL: Duration = Duration::from_millis(500);
/// How soon to look again while an open transaction holds the horizon back.
const HORIZON_RETRY: Duration = Duration::from_millis(5);
/// A horizon held back longer than this is logged with the backend holding it.
const HORIZON_WARN_AFTER: Duration = Duration::from_secs(5);

/// What the relay is doing, for health checks and metrics.
#[derive(Debug, Default)]
pub struct RelayStatus {
    active: AtomicBool,
    sequenced: AtomicI64,
    published: AtomicI64,
    /// Milliseconds since the Unix epoch when events first waited behind the
    /// horizon, 0 when none wait.
    horizon_blocked_since_ms: AtomicI64,
}

impl RelayStatus {
    /// Whether this process holds the relay lock.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The last position numbered.
    pub fn sequenced(&self) -> i64 {
        self.sequenced.load(Ordering::Relaxed)
    }

    /// The last position JetStream acknowledged.
    pub fn published(&self) -> i64 {
        self.published.load(Ordering::Relaxed)
    }

    /// How long committed events have waited for an older transaction to end.
    pub fn horizon_age(&self) -> Duration {
        match self.horizon_blocked_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => {
                Duration::from_millis((chrono::Utc::now().timestamp_millis() - since).max(0) as u64)
            }
        }
    }
}

/// Why the active relay stepped down.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed (including losing the lock's connection).
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The stream holds positions this database never numbered: it belongs to
    /// another database, and publishing would corrupt it.
    #[error("stream {stream} ends at position {stream_position} but this database's log ends at {log_position}")]
    ForeignStream {
        /// The stream's name.
        stream: String,
        /// The last position the stream holds.
        stream_position: i64,
        /// The last position of this database's log.
        log_position: i64,
    },
}

/// The relay of one database to one JetStream stream.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    topology: Topology,
    status: Arc<RelayStatus>,
}

impl Relay {
    /// A relay between `pool`'s database and `client`'s JetStream.
    pub fn new(pool: PgPool, client: async_nats::Client, topology: Topology) -> Self {
        Self {
            pool,
            jetstream: jetstream::new(client),
            topology,
            status: Arc::default(),
        }
    }

    /// Shared view of what the relay is doing.
    pub fn status(&self) -> Arc<RelayStatus> {
        self.status.clone()
    }

    /// Waits to become the active relay, relays until `shutdown` completes, and
    /// waits again whenever it loses its lock or its database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                outcome = self.try_lead() => match outcome {
                    Ok(false) => {}
                    Ok(true) => tracing::info!("relay stepped down"),
                    Err(err) => tracing::warn!(%err, "relay stepped down"),
                },
            }
            self.status.active.store(false, Ordering::Relaxed);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(STANDBY_INTERVAL) => {}
            }
        }
    }

    /// Takes the lock if it is free and relays for as long as it holds it.
    /// `Ok(false)`: another relay is active.
    async fn try_lead(&self) -> Result<bool, RelayError> {
        let Some(mut lock) = locks::try_hold(&self.pool, locks::RELAY).await? else {
            return Ok(false);
        };
        self.status.active.store(true, Ordering::Relaxed);
        tracing::info!("relay is active");
        let (sequenced_tx, sequenced_rx) = watch::channel(Arc::new(Numbered {
            position: log::head(&mut lock).await?,
            entries: Vec::new(),
        }));
        tokio::select! {
            result = self.sequence(&mut lock, sequenced_tx) => result?,
            result = self.publish(sequenced_rx) => result?,
        }
        Ok(true)
    }

    /// Numbers committed events for as long as the lock connection works.
    async fn sequence(
        &self,
        lock: &mut PgConnection,
        sequenced: watch::Sender<Arc<Numbered>>,
    ) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(COMMIT_CHANNEL).await?;
        let mut last_warning: Option<Instant> = None;
        let mut heads = Heads::default();
        loop {
            let (step, entries) = sequence_batch(lock, &mut heads).await?;
            if step.numbered > 0 {
                self.status
                    .sequenced
                    .store(step.position, Ordering::Relaxed);
                sequenced.send_replace(Arc::new(Numbered {
                    position: step.position,
                    entries,
                }));
            }
            if step.blocked {
                self.note_horizon_blocked(lock, &mut last_warning).await?;
            } else {
                self.status
                    .horizon_blocked_since_ms
                    .store(0, Ordering::Relaxed);
                last_warning = None;
            }
            if step.numbered == SEQUENCE_BATCH || step.unhashed {
                continue;
            }
            let wait = if step.blocked {
                HORIZON_RETRY
            } else {
                POLL_INTERVAL
            };
            tokio::select! {
                notified = listener.recv() => { notified?; }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn note_horizon_blocked(
        &self,
        lock: &mut PgConnection,
        last_warning: &mut Option<Instant>,
    ) -> Result<(), RelayError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let _ = self.status.horizon_blocked_since_ms.compare_exchange(
            0,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let age = self.status.horizon_age();
        if age < HORIZON_WARN_AFTER
            || last_warning.is_some_and(|at| at.elapsed() < HORIZON_WARN_AFTER)
        {
            return Ok(());
        }
        *last_warning = Some(Instant::now());
        let blocker: Option<Blocker> = sqlx::query_as(
            "SELECT pid, datname::text AS database, state, left(query, 200) AS query
               FROM pg_stat_activity
              WHERE backend_xid = xid(event_horizon())
              LIMIT 1",
        )
        .fetch_optional(&mut *lock)
        .await?;
        match blocker {
            Some(Blocker {
                pid,
                database,
                state,
                query,
            }) => tracing::warn!(
                horizon_age_ms = age.as_millis() as u64,
                pid,
                database,
                state,
                query,
                "committed events wait behind an open transaction; they are relayed once it ends"
            ),
            None => tracing::warn!(
                horizon_age_ms = age.as_millis() as u64,
                "committed events wait behind an open transaction"
            ),
        }
        Ok(())
    }

    /// Publishes sequenced entries in order, forever; errors of NATS are retried,
    /// only Postgres errors and a foreign stream end it.
    async fn publish(
        &self,
        mut sequenced: watch::Receiver<Arc<Numbered>>,
    ) -> Result<(), RelayError> {
        let mut backoff = Backoff::default();
        let mut known: Option<Published> = None;
        loop {
            let published = match known.take() {
                Some(published) => published,
                None => match self.resume().await {
                    Ok(resumed) => {
                        self.check_not_foreign(resumed.position).await?;
                        resumed
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot reach the JetStream stream; retrying");
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            let numbered = sequenced.borrow_and_update().clone();
            let read;
            let entries = match numbered.after(published.position) {
                Some(entries) => entries,
                None if numbered.position <= published.position => &[],
                None => {
                    read = log::read_after(&self.pool, published.position, PUBLISH_BATCH).await?;
                    &read[..]
                }
            };
            if entries.is_empty() {
                self.status
                    .published
                    .store(published.position, Ordering::Relaxed);
                known = Some(published);
                tokio::select! {
                    changed = sequenced.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
                continue;
            }
            match self.publish_batch(entries, published).await {
                Ok(now) => {
                    backoff.reset();
                    self.status.published.store(now.position, Ordering::Relaxed);
                    sqlx::query("UPDATE relay_published SET position = $1")
                        .bind(now.position)
                        .execute(&self.pool)
                        .await?;
                    known = Some(now);
                }
                Err(err) => {
                    tracing::warn!(%err, "publishing failed; resuming from the stream's last message");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Sends `entries` pipelined and awaits every acknowledgement in order.
    /// A traced entry's `publish` span, a child of its command's, lasts until
    /// its acknowledgement.
    async fn publish_batch(
        &self,
        entries: &[LogEntry],
        mut published: Published,
    ) -> Result<Published, async_nats::Error> {
        let started = Instant::now();
        let mut acks: Vec<(PublishAckFuture, Published, tracing::Span)> =
            Vec::with_capacity(entries.len());
        let mut previous = published.event_id;
        for entry in entries {
            let span = trace::of_entry("publish", None, entry);
            let mut message = jetstream::message::PublishMessage::build()
                .payload(entry.to_json().into())
                .headers(headers_of(entry))
                .message_id(entry.event_id.to_string());
            if let Some(previous) = previous {
                message = message.expected_last_message_id(previous.to_string());
            }
            let subject = self
                .topology
                .subject(&entry.aggregate_type, &entry.aggregate_id);
            let ack = self.jetstream.send_publish(subject, message).await?;
            let at = Published {
                position: entry.position,
                event_id: Some(entry.event_id),
            };
            acks.push((ack, at, span));
            previous = Some(entry.event_id);
        }
        let sent = acks.len() as u64;
        for (ack, at, _span) in acks {
            ack.await?;
            published = at;
        }
        metrics::histogram!("herald_relay_publish_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("herald_relay_published_total").increment(sent);
        Ok(published)
    }

    /// Where the stream ends: the position of its last message (0 when empty).
    async fn resume(&self) -> Result<Published, async_nats::Error> {
        let mut stream = self.topology.ensure_stream(&self.jetstream).await?;
        let state = stream.info().await?.state.clone();
        // The last message may have been deleted by hand: take the last one left.
        let mut sequence = state.last_sequence;
        let last = loop {
            if sequence == 0 || sequence < state.first_sequence {
                return Ok(Published::default());
            }
            match stream.get_raw_message(sequence).await {
                Ok(message) => break message,
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => sequence -= 1,
                Err(err) => return Err(err.into()),
            }
        };
        let header = |name: &str| {
            last.headers
                .get(name)
                .and_then(|value| value.as_str().parse::<i64>().ok())
        };
        let published = Published {
            position: header(headers::POSITION).unwrap_or(0),
            event_id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()),
        };
        tracing::info!(
            position = published.position,
            "resuming after the stream's last message"
        );
        Ok(published)
    }

    async fn check_not_foreign(&self, stream_position: i64) -> Result<(), RelayError> {
        let log_position = log::head(&self.pool).await?;
        if stream_position > log_position {
            return Err(RelayError::ForeignStream {
                stream: self.topology.stream_name(),
                stream_position,
                log_position,
            });
        }
        Ok(())
    }
}

/// The backend whose open transaction holds the horizon back.
#[derive(Debug, sqlx::FromRow)]
struct Blocker {
    pid: i32,
    database: Option<String>,
    state: Option<String>,
    query: Option<String>,
}

/// The sequencer's latest step, as the publisher sees it: how far the log
/// reaches, and the entries that step numbered, so the publisher need not read
/// them back when it is right behind.
struct Numbered {
    position: i64,
    entries: Vec<LogEntry>,
}

impl Numbered {
    /// The entries after `position`, when this step holds every one of them.
    fn after(&self, position: i64) -> Option<&[LogEntry]> {
        let first = self.entries.first()?.position;
        let skip = usize::try_from(position + 1 - first).ok()?;
        self.entries.get(skip..).filter(|rest| !rest.is_empty())
    }
}

/// How far the stream is known to reach.
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    position: i64,
    event_id: Option<i64>,
}

/// Exponential backoff between retries of an unreachable NATS.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    async fn wait(&mut self) {
        self.failures = (self.failures + 1).min(6);
        tokio::time::sleep(Duration::from_millis(50 << self.failures)).await;
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}
