//! The admin dashboard's read model: bookings and payments by status, and
//! revenue per currency.
//!
//! Counts are kept as running totals moved by each transition, so the
//! dashboard never scans bookings or payments. To know which total a
//! transition lowers, the projection remembers every aggregate's current
//! status in tables of its own.

use std::collections::BTreeMap;

use domain::booking::{BookingEvent, BookingStatus};
use domain::payment::{PaymentEvent, PaymentStatus};
use herald_nats::LogEntry;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

use crate::bookings::aggregate_uuid;
use crate::ApplyError;

use crate::{BOOKING, PAYMENT};

/// `rm_summary_counts.kind` of booking totals.
const BOOKINGS: &str = "booking";
/// `rm_summary_counts.kind` of payment totals.
const PAYMENTS: &str = "payment";

/// What the admin dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Summary {
    /// How many bookings are in each status; every status is present, zero
    /// included, so a dashboard's layout does not depend on history.
    pub bookings_by_status: BTreeMap<String, i64>,
    /// How many payments are in each status, zero included.
    pub payments_by_status: BTreeMap<String, i64>,
    /// Money kept per currency, by currency code.
    pub revenue: Vec<Revenue>,
}

/// Money kept in one currency: what succeeded minus what was refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Revenue {
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units; a refund still pending counts as kept until it completes.
    pub amount_minor: i64,
}

/// Applies one log entry to the dashboard totals; chat entries change nothing.
pub(crate) async fn apply(conn: &mut PgConnection, entry: &LogEntry) -> Result<(), ApplyError> {
    match entry.aggregate_type.as_str() {
        BOOKING => {
            let booking_id = aggregate_uuid(entry)?;
            let status = match crate::decode::<BookingEvent>(entry)? {
                BookingEvent::BookingRequested { .. } => {
                    let pending = BookingStatus::Pending.as_str();
                    let inserted = sqlx::query(
                        "INSERT INTO rm_summary_bookings (booking_id, status) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(booking_id)
                    .bind(pending)
                    .execute(&mut *conn)
                    .await?;
                    if inserted.rows_affected() == 1 {
                        count_in(conn, BOOKINGS, pending).await?;
                    }
                    return Ok(());
                }
                BookingEvent::DoctorAssigned { .. } => BookingStatus::Assigned,
                BookingEvent::BookingCompleted { .. } => BookingStatus::Completed,
                BookingEvent::BookingCancelled { .. } => BookingStatus::Cancelled,
                // Being paid is a flag beside the status, not a status.
                BookingEvent::BookingPaid { .. } => return Ok(()),
            };
            let moved: Option<String> = sqlx::query_scalar(
                "UPDATE rm_summary_bookings b SET status = $2
                   FROM (SELECT status FROM rm_summary_bookings WHERE booking_id = $1) old
                  WHERE b.booking_id = $1 AND b.status <> $2
                 RETURNING old.status",
            )
            .bind(booking_id)
            .bind(status.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(from) = moved {
                count_out(conn, BOOKINGS, &from).await?;
                count_in(conn, BOOKINGS, status.as_str()).await?;
            }
        }
        PAYMENT => {
            let payment_id = aggregate_uuid(entry)?;
            let status = match crate::decode::<PaymentEvent>(entry)? {
                PaymentEvent::PaymentInitiated { amount, .. } => {
                    let pending = PaymentStatus::Pending.as_str();
                    let inserted = sqlx::query(
                        "INSERT INTO rm_summary_payments (payment_id, status, amount_minor, currency)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(payment_id)
                    .bind(pending)
                    .bind(amount.amount_minor())
                    .bind(amount.currency().as_str())
                    .execute(&mut *conn)
                    .await?;
                    if inserted.rows_affected() == 1 {
                        count_in(conn, PAYMENTS, pending).await?;
                    }
                    return Ok(());
                }
                PaymentEvent::PaymentSucceeded { .. } => PaymentStatus::Succeeded,
                PaymentEvent::PaymentFailed { .. } => PaymentStatus::Failed,
                PaymentEvent::RefundRequested { .. } => PaymentStatus::RefundPending,
                PaymentEvent::PaymentRefunded { .. } => PaymentStatus::Refunded,
            };
            let moved: Option<(String, i64, String)> = sqlx::query_as(
                "UPDATE rm_summary_payments p SET status = $2
                   FROM (SELECT status FROM rm_summary_payments WHERE payment_id = $1) old
                  WHERE p.payment_id = $1 AND p.status <> $2
                 RETURNING old.status, p.amount_minor, p.currency",
            )
            .bind(payment_id)
            .bind(status.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((from, amount_minor, currency)) = moved {
                count_out(conn, PAYMENTS, &from).await?;
                count_in(conn, PAYMENTS, status.as_str()).await?;
                match status {
                    PaymentStatus::Succeeded => {
                        add_to_revenue(conn, &currency, amount_minor, 0).await?;
                    }
                    PaymentStatus::Refunded => {
                        add_to_revenue(conn, &currency, 0, amount_minor).await?;
                    }
                    PaymentStatus::Pending
                    | PaymentStatus::Failed
                    | PaymentStatus::RefundPending => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Counts one more aggregate in `status`.
async fn count_in(conn: &mut PgConnection, kind: &str, status: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rm_summary_counts AS c (kind, status, count) VALUES ($1, $2, 1)
         ON CONFLICT (kind, status) DO UPDATE SET count = c.count + 1",
    )
    .bind(kind)
    .bind(status)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts one aggregate fewer in `status`, which it was counted in before.
async fn count_out(conn: &mut PgConnection, kind: &str, status: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE rm_summary_counts SET count = count - 1 WHERE kind = $1 AND status = $2")
        .bind(kind)
        .bind(status)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn add_to_revenue(
    conn: &mut PgConnection,
    currency: &str,
    succeeded_minor: i64,
    refunded_minor: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rm_summary_revenue AS r (currency, succeeded_minor, refunded_minor)
         VALUES ($1, $2, $3)
         ON CONFLICT (currency) DO UPDATE
            SET succeeded_minor = r.succeeded_minor + EXCLUDED.succeeded_minor,
                refunded_minor = r.refunded_minor + EXCLUDED.refunded_minor",
    )
    .bind(currency)
    .bind(succeeded_minor)
    .bind(refunded_minor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every booking status, so the dashboard lists each one even at zero. The
/// match makes adding a status a compile error here until it is listed.
fn booking_statuses() -> [BookingStatus; 4] {
    use BookingStatus::{Assigned, Cancelled, Completed, Pending};
    match Pending {
        Pending | Assigned | Completed | Cancelled => {}
    }
    [Pending, Assigned, Completed, Cancelled]
}

/// Every payment status, listed for the same reason as [`booking_statuses`].
fn payment_statuses() -> [PaymentStatus; 5] {
    use PaymentStatus::{Failed, Pending, RefundPending, Refunded, Succeeded};
    match Pending {
        Pending | Succeeded | Failed | RefundPending | Refunded => {}
    }
    [Pending, Succeeded, Failed, RefundPending, Refunded]
}

/// The dashboard's figures as of the summary projection's checkpoint.
pub async fn get(pool: &PgPool) -> Result<Summary, sqlx::Error> {
    let mut bookings_by_status: BTreeMap<String, i64> = booking_statuses()
        .into_iter()
        .map(|status| (status.as_str().to_owned(), 0))
        .collect();
    let mut payments_by_status: BTreeMap<String, i64> = payment_statuses()
        .into_iter()
        .map(|status| (status.as_str().to_owned(), 0))
        .collect();
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, status, count FROM rm_summary_counts")
            .fetch_all(pool)
            .await?;
    for (kind, status, count) in counts {
        let by_status = match kind.as_str() {
            BOOKINGS => &mut bookings_by_status,
            PAYMENTS => &mut payments_by_status,
            _ => continue,
        };
        by_status.insert(status, count);
    }
    let revenue = sqlx::query_as::<_, Revenue>(
        "SELECT currency, succeeded_minor - refunded_minor AS amount_minor
           FROM rm_summary_revenue
          ORDER BY currency",
    )
    .fetch_all(pool)
    .await?;
    Ok(Summary {
        bookings_by_status,
        payments_by_status,
        revenue,
    })
}
