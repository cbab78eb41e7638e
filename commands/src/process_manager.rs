//! The booking ⇄ payment process manager: events in, commands out.
//!
//! - `PaymentSucceeded` → the booking is marked paid.
//! - A booking that is both cancelled and paid (`BookingCancelled` of a paid
//!   booking, or `BookingPaid` of a cancelled one) → a refund is requested.
//! - `RefundRequested` (by it or by an admin) → the gateway is asked for the
//!   refund; the provider confirms with a notification, which the webhook
//!   turns into `PaymentRefunded`. Nothing follows that.
//!
//! It is a JetStream durable consumer like the projection workers, with its
//! checkpoint in the same table, filling gaps from the Postgres log. Its
//! effects are commands in their own transactions and calls to a provider, so
//! they cannot commit together with the checkpoint; instead every effect is
//! idempotent: a command carries the triggering event as its cause and an
//! idempotency key derived from it, and a refund carries an idempotence key
//! derived from the payment. A redelivered or replayed entry therefore never
//! acts twice. One instance per database is active (a Postgres advisory lock),
//! so two never race on the same entry; others stand by.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use domain::booking::{Booking, BookingCommand, BookingEvent, BookingStatus};
use domain::payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
use domain::values::{Actor, Reason};
use futures::StreamExt;
use herald_nats::{locks, log, LogEntry, Topology};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::gateway::{GatewayError, PaymentGateway, RefundRequest};
use crate::{request_hash, CommandError, IdempotencyKey, Metadata, WriteSide};

/// Its name in `projection_checkpoints` and in its JetStream consumer's name.
pub const CHECKPOINT: &str = "payment-process";
/// Most entries read from the log or taken from the stream at once.
const BATCH: usize = 500;
/// How long it waits for a message before looking at the log itself.
const IDLE_CATCH_UP: Duration = Duration::from_secs(1);
/// How long JetStream waits for an acknowledgement before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a standby waits before trying to become active again.
const STANDBY_INTERVAL: Duration = Duration::from_secs(1);

/// Why the process manager paused.
#[derive(Debug, thiserror::Error)]
enum ProcessError {
    #[error("nats: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("command: {0}")]
    Command(#[source] CommandError),
    #[error("gateway: {0}")]
    Gateway(#[source] GatewayError),
    #[error("the consumer's message stream ended")]
    StreamEnded,
}

/// Why an entry could not be acted on.
#[derive(Debug, thiserror::Error)]
enum ReactError {
    /// Worth trying again later: Postgres or the provider is away, or others
    /// kept winning the race for an aggregate.
    #[error(transparent)]
    Later(ProcessError),
    /// Will fail the same way every time: set aside for a person to look at.
    #[error("{0}")]
    Never(String),
}

impl From<CommandError> for ReactError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Unavailable(_) | CommandError::Conflict => {
                Self::Later(ProcessError::Command(err))
            }
            other => Self::Never(format!("{other}: {:?}", std::error::Error::source(&other))),
        }
    }
}

impl From<GatewayError> for ReactError {
    fn from(err: GatewayError) -> Self {
        if err.is_transient() {
            Self::Later(ProcessError::Gateway(err))
        } else {
            Self::Never(err.to_string())
        }
    }
}

/// Runs the booking ⇄ payment process.
pub struct PaymentProcess {
    write: Arc<WriteSide>,
    gateway: Arc<dyn PaymentGateway>,
    jetstream: jetstream::Context,
    topology: Topology,
}

impl PaymentProcess {
    /// The process for the deployment named by `topology`, issuing commands
    /// through `write` and refunds through `gateway`.
    pub fn new(
        write: Arc<WriteSide>,
        gateway: Arc<dyn PaymentGateway>,
        client: async_nats::Client,
        topology: Topology,
    ) -> Self {
        Self {
            write,
            gateway,
            jetstream: jetstream::new(client),
            topology,
        }
    }

    /// Waits to become the active instance and processes until `shutdown`
    /// completes. Failures of NATS, Postgres or the provider are waited out
    /// with growing pauses; the entry that met them is tried again.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                outcome = self.try_lead() => match outcome {
                    Ok(()) => failures = 0,
                    Err(err) => {
                        failures = (failures + 1).min(6);
                        tracing::warn!(%err, "payment process manager paused");
                    }
                },
            }
            let pause = STANDBY_INTERVAL.min(Duration::from_millis(50 << failures));
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Takes the lock if it is free and processes for as long as it holds it.
    async fn try_lead(&self) -> Result<(), ProcessError> {
        // The checkpoint moves only through the lock's connection, so an
        // instance that lost its lock cannot move it.
        let Some(mut lock) = locks::try_hold(self.write.pool(), locks::PAYMENT_PROCESS).await?
        else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(CHECKPOINT)
        .execute(&mut lock)
        .await?;
        let name = format!("{}-{CHECKPOINT}", self.topology.prefix());
        let consumer = self
            .topology
            .durable_consumer(&self.jetstream, &name, ACK_WAIT, 20 * BATCH as i64)
            .await?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(async_nats::Error::from)?
            .ready_chunks(BATCH);
        tracing::info!(consumer = name, "payment process manager is active");
        self.catch_up(&mut lock).await?;
        loop {
            let chunk = match tokio::time::timeout(IDLE_CATCH_UP, messages.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Err(ProcessError::StreamEnded),
                Err(_idle) => {
                    self.catch_up(&mut lock).await?;
                    continue;
                }
            };
            let received: Vec<_> = chunk
                .into_iter()
                .filter_map(|item| item.map_err(|err| tracing::debug!(%err, "pull error")).ok())
                .collect();
            let Some(last) = received.last() else {
                continue;
            };
            let mut entries: Vec<LogEntry> = received
                .iter()
                // The log in Postgres fills whatever an undecodable message held.
                .filter_map(|message| LogEntry::from_json(&message.payload).ok())
                .collect();
            entries.sort_by_key(|entry| entry.position);
            if let Some(target) = entries.last().map(|entry| entry.position) {
                self.process_up_to(&mut lock, target, entries).await?;
            }
            // With AckPolicy::All this acknowledges the whole chunk, all processed.
            last.ack().await?;
        }
    }

    /// Processes whatever the log holds beyond the checkpoint.
    async fn catch_up(&self, lock: &mut PgConnection) -> Result<(), ProcessError> {
        let head = log::head(self.write.pool()).await?;
        self.process_up_to(lock, head, Vec::new()).await
    }

    /// Processes every entry after the checkpoint up to `target`: the entries
    /// received when they are exactly the ones missing, else read from the log.
    async fn process_up_to(
        &self,
        lock: &mut PgConnection,
        target: i64,
        mut received: Vec<LogEntry>,
    ) -> Result<(), ProcessError> {
        let mut at: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
                .bind(CHECKPOINT)
                .fetch_one(&mut *lock)
                .await?;
        while at < target {
            received.retain(|entry| entry.position > at);
            let exactly_missing = received.last().map(|e| e.position) == Some(target)
                && received
                    .iter()
                    .enumerate()
                    .all(|(i, entry)| entry.position == at + 1 + i as i64);
            let entries = if exactly_missing {
                std::mem::take(&mut received)
            } else {
                let limit = (target - at).min(BATCH as i64);
                log::read_after(self.write.pool(), at, limit).await?
            };
            let Some(last) = entries.last().map(|entry| entry.position) else {
                // Not sequenced in this database yet.
                return Ok(());
            };
            for entry in &entries {
                if !follows(entry) {
                    continue;
                }
                match self.react(entry).await {
                    Ok(()) => {}
                    Err(ReactError::Later(err)) => {
                        save(lock, entry.position - 1).await?;
                        return Err(err);
                    }
                    Err(ReactError::Never(error)) => {
                        tracing::error!(
                            position = entry.position,
                            event_type = entry.event_type,
                            aggregate_id = entry.aggregate_id,
                            error,
                            "the payment process cannot act on an event; set aside as a dead letter"
                        );
                        bury(lock, entry, &error).await?;
                    }
                }
                save(lock, entry.position).await?;
            }
            save(lock, last).await?;
            at = last;
        }
        Ok(())
    }

    /// Acts on one entry the process follows.
    async fn react(&self, entry: &LogEntry) -> Result<(), ReactError> {
        let id = Uuid::parse_str(&entry.aggregate_id)
            .map_err(|err| ReactError::Never(format!("aggregate id is not a UUID: {err}")))?;
        let decode = |err: serde_json::Error| ReactError::Never(format!("cannot decode: {err}"));
        let payload = domain::upcast::upcast(
            &entry.event_type,
            &entry.event_version,
            entry.payload.clone(),
        );
        match entry.aggregate_type.as_str() {
            "Payment" => match serde_json::from_value(payload).map_err(decode)? {
                PaymentEvent::PaymentSucceeded { at, .. } => self.mark_paid(entry, id, at).await,
                PaymentEvent::RefundRequested { .. } => self.refund_at_provider(id).await,
                _ => Ok(()),
            },
            "Booking" => match serde_json::from_value(payload).map_err(decode)? {
                BookingEvent::BookingCancelled { at, .. }
                | BookingEvent::BookingPaid { at, .. } => {
                    self.refund_if_cancelled_and_paid(entry, id, at).await
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// A succeeded payment settles its booking.
    async fn mark_paid(
        &self,
        entry: &LogEntry,
        payment_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), ReactError> {
        let payment = self.write.load::<Payment>(payment_id).await?;
        let booking_id = payment
            .booking_id()
            .ok_or_else(|| ReactError::Never("the payment does not exist".to_owned()))?;
        let command = BookingCommand::MarkPaid { payment_id, at };
        let metadata = caused_by(entry, "MarkPaid", booking_id);
        metrics::counter!("herald_process_manager_actions_total", "action" => "mark_paid")
            .increment(1);
        self.write
            .execute::<Booking>(booking_id, command, &metadata)
            .await?;
        Ok(())
    }

    /// A visit that will not happen is not paid for: once a booking is both
    /// cancelled and paid, whichever came last, its payment is refunded.
    async fn refund_if_cancelled_and_paid(
        &self,
        entry: &LogEntry,
        booking_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), ReactError> {
        let booking = self.write.load::<Booking>(booking_id).await?;
        let Some(payment_id) = booking.paid_by() else {
            return Ok(());
        };
        if booking.status() != Some(BookingStatus::Cancelled) {
            return Ok(());
        }
        let payment = self.write.load::<Payment>(payment_id).await?;
        if payment.status() != Some(PaymentStatus::Succeeded) {
            // Already being refunded or refunded: by an admin, or after the
            // other of the two events.
            return Ok(());
        }
        let reason = Reason::parse("the booking was cancelled after it was paid")
            .map_err(|err| ReactError::Never(err.to_string()))?;
        let command = PaymentCommand::RequestRefund {
            actor: Actor::system(),
            reason,
            at,
        };
        let metadata = caused_by(entry, "RequestRefund", payment_id);
        metrics::counter!("herald_process_manager_actions_total", "action" => "request_refund")
            .increment(1);
        self.write
            .execute::<Payment>(payment_id, command, &metadata)
            .await?;
        Ok(())
    }

    /// Asks the provider to return a payment whose refund was requested. The
    /// idempotence key is the payment's, so however often this runs, and
    /// whoever requested the refund, the provider refunds once.
    async fn refund_at_provider(&self, payment_id: Uuid) -> Result<(), ReactError> {
        let payment = self.write.load::<Payment>(payment_id).await?;
        if payment.status() != Some(PaymentStatus::RefundPending) {
            return Ok(());
        }
        let (Some(provider_payment_id), Some(amount)) =
            (payment.provider_payment_id(), payment.amount())
        else {
            return Err(ReactError::Never(
                "the payment has no provider reference to refund".to_owned(),
            ));
        };
        let refund = self
            .gateway
            .request_refund(&RefundRequest {
                idempotence_key: format!("refund-{payment_id}"),
                payment_id,
                provider_payment_id: provider_payment_id.to_owned(),
                amount: amount.clone(),
            })
            .await?;
        metrics::counter!("herald_process_manager_actions_total", "action" => "provider_refund")
            .increment(1);
        tracing::info!(%payment_id, provider_refund_id = refund.provider_refund_id, "refund requested from the provider");
        Ok(())
    }
}

/// Whether the process acts on this entry's event.
fn follows(entry: &LogEntry) -> bool {
    matches!(
        (entry.aggregate_type.as_str(), entry.event_type.as_str()),
        ("Payment", "PaymentSucceeded" | "RefundRequested")
            | ("Booking", "BookingCancelled" | "BookingPaid")
    )
}

/// Metadata of a command the process issues because of `entry`: Herald acts,
/// the entry's event is the cause, the flow keeps its correlation, and the
/// idempotency key is derived from the event, so acting on it again stores
/// nothing new.
fn caused_by(entry: &LogEntry, command: &str, target: Uuid) -> Metadata {
    let event_id = entry.event_id.to_string();
    Metadata {
        actor: Actor::system(),
        correlation_id: entry.correlation_id().unwrap_or(&event_id).to_owned(),
        causation_id: event_id,
        idempotency: Some(IdempotencyKey {
            key: format!("{CHECKPOINT}/{}", entry.event_id),
            request_hash: request_hash(command, &target.to_string(), b""),
        }),
    }
}

/// Moves the checkpoint forward (never back) through the lock's connection.
async fn save(lock: &mut PgConnection, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_checkpoints SET position = $2 WHERE projection = $1 AND position < $2",
    )
    .bind(CHECKPOINT)
    .bind(position)
    .execute(lock)
    .await?;
    Ok(())
}

/// Records an entry the process could not act on, so a person can.
async fn bury(lock: &mut PgConnection, entry: &LogEntry, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_dead_letters (projection, position, event_id, error, attempts)
         VALUES ($1, $2, $3, $4, 1)
         ON CONFLICT (projection, position) DO UPDATE
            SET error = EXCLUDED.error, attempts = projection_dead_letters.attempts + 1,
                failed_at = EXCLUDED.failed_at",
    )
    .bind(CHECKPOINT)
    .bind(entry.position)
    .bind(entry.event_id)
    .bind(error)
    .execute(lock)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(aggregate_type: &str, event_type: &str) -> LogEntry {
        LogEntry {
            position: 7,
            event_id: 42,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: Uuid::nil().to_string(),
            sequence: 1,
            event_type: event_type.to_owned(),
            event_version: "1".to_owned(),
            payload: serde_json::Value::Null,
            metadata: serde_json::json!({ "correlation_id": "request-1" }),
            recorded_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn it_follows_only_the_events_of_the_payment_flow() {
        for (aggregate, event) in [
            ("Payment", "PaymentSucceeded"),
            ("Payment", "RefundRequested"),
            ("Booking", "BookingCancelled"),
            ("Booking", "BookingPaid"),
        ] {
            assert!(follows(&entry(aggregate, event)), "{event}");
        }
        for (aggregate, event) in [
            ("Payment", "PaymentInitiated"),
            ("Payment", "PaymentRefunded"),
            ("Payment", "PaymentFailed"),
            ("Booking", "BookingRequested"),
            ("Chat", "BookingCancelled"),
        ] {
            assert!(!follows(&entry(aggregate, event)), "{aggregate} {event}");
        }
    }

    #[test]
    fn a_command_it_issues_is_caused_by_the_event_and_keyed_by_it() {
        let target = Uuid::from_u128(5);
        let metadata = caused_by(&entry("Payment", "PaymentSucceeded"), "MarkPaid", target);
        assert_eq!(metadata.actor, Actor::system());
        assert_eq!(metadata.causation_id, "42");
        assert_eq!(metadata.correlation_id, "request-1");
        let key = metadata.idempotency.unwrap_or_else(|| panic!("no key"));
        assert_eq!(key.key, "payment-process/42");
        let again = caused_by(&entry("Payment", "PaymentSucceeded"), "MarkPaid", target);
        assert_eq!(
            again.idempotency.map(|k| k.request_hash),
            Some(key.request_hash)
        );
    }
}
