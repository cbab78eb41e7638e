//! The payments read model: each payment's state, and the payments of a booking.

mod fold;

use chrono::{DateTime, Utc};
use domain::payment::{PaymentEvent, PaymentStatus};
use domain::values::PaymentMethod;
use herald_nats::LogEntry;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

pub(crate) use fold::Fold;

use crate::aggregate_uuid;
use crate::ApplyError;

use crate::PAYMENT;

/// A payment as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct PaymentRow {
    /// The payment's id.
    pub id: Uuid,
    /// The booking paid for.
    pub booking_id: Uuid,
    /// The patient paying; the only one besides admins who may see it.
    pub patient_id: Uuid,
    /// How the patient pays.
    #[schema(value_type = PaymentMethod)]
    pub method: String,
    /// The charge in minor units.
    pub amount_minor: i64,
    /// The charge's ISO 4217 currency.
    pub currency: String,
    /// Where the payment is in its life.
    #[schema(value_type = PaymentStatus)]
    pub status: String,
    /// The provider's reference for the charge, given when it was opened.
    pub provider_payment_id: Option<String>,
    /// Where the patient confirms the charge, given when it was opened.
    pub confirmation_url: Option<String>,
    /// When the patient started paying.
    pub initiated_at: DateTime<Utc>,
    /// When the latest event that changed it was stored.
    pub updated_at: DateTime<Utc>,
    /// The log position of the latest event that changed it: its ETag.
    #[serde(skip)]
    pub version: i64,
}

/// Applies one log entry to the payments table; entries of other aggregates
/// change nothing.
pub(crate) async fn apply(conn: &mut PgConnection, entry: &LogEntry) -> Result<(), ApplyError> {
    if entry.aggregate_type != PAYMENT {
        return Ok(());
    }
    let payment_id = aggregate_uuid(entry)?;
    let (status, (provider_payment_id, provider_refund_id)) =
        match crate::decode::<PaymentEvent>(entry)? {
            PaymentEvent::PaymentInitiated {
                payment_id,
                booking_id,
                patient_id,
                method,
                amount,
                initiated_at,
                provider_payment_id,
                confirmation_url,
            } => {
                sqlx::query(
                    "INSERT INTO rm_payments (payment_id, booking_id, patient_id, method,
                                              amount_minor, currency, status,
                                              provider_payment_id, provider_refund_id,
                                              confirmation_url, initiated_at, created_position,
                                              updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, $12, $11)",
                )
                .bind(payment_id)
                .bind(booking_id)
                .bind(patient_id)
                .bind(method.as_str())
                .bind(amount.amount_minor())
                .bind(amount.currency().as_str())
                .bind(PaymentStatus::Pending.as_str())
                .bind(provider_payment_id)
                .bind(confirmation_url)
                .bind(initiated_at)
                .bind(entry.position)
                .bind(entry.recorded_at)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            other => (other.status_after(), provider_ids(other)),
        };
    sqlx::query(
        "UPDATE rm_payments
            SET status = $2,
                provider_payment_id = COALESCE($3, provider_payment_id),
                provider_refund_id = COALESCE($4, provider_refund_id),
                updated_at = $5, version = $6
          WHERE payment_id = $1",
    )
    .bind(payment_id)
    .bind(status.as_str())
    .bind(provider_payment_id)
    .bind(provider_refund_id)
    .bind(entry.recorded_at)
    .bind(entry.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The provider's payment and refund ids an event after the first brings;
/// the ones it does not bring stay as they were.
fn provider_ids(event: PaymentEvent) -> (Option<String>, Option<String>) {
    match event {
        PaymentEvent::PaymentSucceeded {
            provider_payment_id,
            ..
        }
        | PaymentEvent::PaymentFailed {
            provider_payment_id,
            ..
        } => (Some(provider_payment_id), None),
        PaymentEvent::PaymentRefunded {
            provider_refund_id, ..
        } => (None, Some(provider_refund_id)),
        PaymentEvent::PaymentInitiated { .. } | PaymentEvent::RefundRequested { .. } => {
            (None, None)
        }
    }
}

const SELECT_PAYMENTS: &str = "
    SELECT payment_id AS id, booking_id, patient_id, method, amount_minor, currency, status,
           provider_payment_id, confirmation_url, initiated_at, updated_at, version
      FROM rm_payments";

/// One payment, whoever asks; callers check visibility with its `patient_id`.
pub async fn get<'c>(
    executor: impl PgExecutor<'c>,
    payment_id: Uuid,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(&format!("{SELECT_PAYMENTS} WHERE payment_id = $1"))
        .bind(payment_id)
        .fetch_optional(executor)
        .await
}

/// Every payment started for a booking, newest first. A booking gathers only
/// its patient's attempts, and none once one succeeds, so there is no paging.
pub async fn for_booking<'c>(
    executor: impl PgExecutor<'c>,
    booking_id: Uuid,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(&format!(
        "{SELECT_PAYMENTS} WHERE booking_id = $1 ORDER BY created_position DESC"
    ))
    .bind(booking_id)
    .fetch_all(executor)
    .await
}
