//! The booking ⇄ payment process manager: events in, commands out.
//!
//! - `PaymentSucceeded` → the booking is marked paid.
//! - A booking that is both cancelled and paid (`BookingCancelled` of a paid
//!   booking, or `BookingPaid` of a cancelled one) → a refund is requested.
//! - `RefundRequested` (by it or by an admin) → the gateway is asked for the
//!   refund; the provider confirms with a notification, which the webhook
//!   turns into `PaymentRefunded`. Nothing follows that.
//!
//! It follows the log through the same loop as the projection workers
//! ([`herald_nats::follower`]), with its checkpoint and dead letters in the
//! same tables, as an [`EffectFollower`]: its effects are commands in their
//! own transactions and calls to a provider, so they cannot commit together
//! with the checkpoint; instead every effect is
//! idempotent: a command carries the triggering event as its cause and an
//! idempotency key derived from it, and a refund carries an idempotence key
//! derived from the payment. A redelivered or replayed entry therefore never
//! acts twice. One instance per database is active (a Postgres advisory lock),
//! so two never race on the same entry; others stand by.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::access::AggregateKind;
use domain::booking::{Booking, BookingCommand, BookingEvent, BookingStatus};
use domain::payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
use domain::values::{Actor, Reason};
use herald_nats::follower::{EffectFollower, Follower, ReactError, Source};
use herald_nats::{locks, LogEntry};
use uuid::Uuid;

use crate::gateway::{GatewayError, PaymentGateway, RefundRequest};
use crate::{request_hash, CommandError, IdempotencyKey, Metadata, WriteSide};

/// Its name in `projection_checkpoints` and `projection_dead_letters`.
pub const CHECKPOINT: &str = "payment-process";

/// Why acting on an entry has to wait.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Postgres is away, or others kept winning the race for an aggregate.
    #[error("command: {0}")]
    Command(#[source] CommandError),
    /// The provider is away.
    #[error("gateway: {0}")]
    Gateway(#[source] GatewayError),
}

impl From<CommandError> for ReactError<ProcessError> {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Unavailable(_) | CommandError::Conflict => {
                Self::Later(ProcessError::Command(err))
            }
            other => Self::Never(format!("{other}: {:?}", std::error::Error::source(&other))),
        }
    }
}

impl From<GatewayError> for ReactError<ProcessError> {
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
    source: Source,
}

impl PaymentProcess {
    /// The process following the log of `source`, issuing commands through
    /// `write` and refunds through `gateway`.
    pub fn new(write: Arc<WriteSide>, gateway: Arc<dyn PaymentGateway>, source: Source) -> Self {
        Self {
            write,
            gateway,
            source,
        }
    }

    /// Waits to become the active instance and processes until `shutdown`
    /// completes. Failures of NATS, Postgres or the provider are waited out
    /// with growing pauses; the entry that met them is tried again.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.source.follow_effects(&self, shutdown).await;
    }

    /// Acts on one entry the process follows.
    async fn act(&self, entry: &LogEntry) -> Result<(), ReactError<ProcessError>> {
        let id = Uuid::parse_str(&entry.aggregate_id)
            .map_err(|err| ReactError::Never(format!("aggregate id is not a UUID: {err}")))?;
        let decode = |err: serde_json::Error| ReactError::Never(format!("cannot decode: {err}"));
        match AggregateKind::parse(&entry.aggregate_type) {
            Some(AggregateKind::Payment) => match entry.decode().map_err(decode)? {
                PaymentEvent::PaymentSucceeded { at, .. } => self.mark_paid(entry, id, at).await,
                PaymentEvent::RefundRequested { .. } => self.refund_at_provider(id).await,
                _ => Ok(()),
            },
            Some(AggregateKind::Booking) => match entry.decode().map_err(decode)? {
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
    ) -> Result<(), ReactError<ProcessError>> {
        let payment = self.write.load::<Payment>(payment_id).await?;
        let booking_id = payment
            .booking_id()
            .ok_or_else(|| ReactError::Never("the payment does not exist".to_owned()))?;
        let command = BookingCommand::MarkPaid { payment_id, at };
        let metadata = caused_by(entry, CHECKPOINT, "MarkPaid", booking_id);
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
    ) -> Result<(), ReactError<ProcessError>> {
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
        let metadata = caused_by(entry, CHECKPOINT, "RequestRefund", payment_id);
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
    async fn refund_at_provider(&self, payment_id: Uuid) -> Result<(), ReactError<ProcessError>> {
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

impl Follower for PaymentProcess {
    const BATCH: usize = 500;

    fn name(&self) -> &str {
        CHECKPOINT
    }

    fn follows(&self, entry: &LogEntry) -> bool {
        follows(entry)
    }
}

impl EffectFollower for PaymentProcess {
    type Later = ProcessError;
    const LOCK: i64 = locks::PAYMENT_PROCESS;

    fn react(
        &self,
        entry: &LogEntry,
    ) -> impl Future<Output = Result<(), ReactError<ProcessError>>> + Send {
        self.act(entry)
    }
}

/// Whether the process acts on this entry's event.
fn follows(entry: &LogEntry) -> bool {
    matches!(
        (
            AggregateKind::parse(&entry.aggregate_type),
            entry.event_type.as_str()
        ),
        (
            Some(AggregateKind::Payment),
            "PaymentSucceeded" | "RefundRequested"
        ) | (
            Some(AggregateKind::Booking),
            "BookingCancelled" | "BookingPaid"
        )
    )
}

/// Metadata of a command the process issues because of `entry`: Herald acts,
/// the entry's event is the cause, the flow keeps its correlation, and the
/// idempotency key is derived from the event, so acting on it again stores
/// nothing new.
pub(crate) fn caused_by(entry: &LogEntry, follower: &str, command: &str, target: Uuid) -> Metadata {
    let event_id = entry.event_id.to_string();
    Metadata {
        actor: Actor::system(),
        correlation_id: entry.correlation_id().unwrap_or(&event_id).to_owned(),
        causation_id: event_id,
        idempotency: Some(IdempotencyKey {
            key: format!("{follower}/{}", entry.event_id),
            request_hash: request_hash(command, &target.to_string(), b""),
        }),
    }
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
        let metadata = caused_by(
            &entry("Payment", "PaymentSucceeded"),
            CHECKPOINT,
            "MarkPaid",
            target,
        );
        assert_eq!(metadata.actor, Actor::system());
        assert_eq!(metadata.causation_id, "42");
        assert_eq!(metadata.correlation_id, "request-1");
        let key = metadata.idempotency.unwrap_or_else(|| panic!("no key"));
        assert_eq!(key.key, "payment-process/42");
        let again = caused_by(
            &entry("Payment", "PaymentSucceeded"),
            CHECKPOINT,
            "MarkPaid",
            target,
        );
        assert_eq!(
            again.idempotency.map(|k| k.request_hash),
            Some(key.request_hash)
        );
    }
}
