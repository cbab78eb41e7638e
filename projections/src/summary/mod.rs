//! The admin dashboard's read model: bookings and payments by status, and
//! revenue per currency.
//!
//! Counts are kept as running totals moved by each transition, so the
//! dashboard never scans bookings or payments. To know which total a
//! transition lowers, the projection remembers every aggregate's current
//! status in tables of its own.

mod fold;

use std::collections::BTreeMap;

use domain::booking::{BookingEvent, BookingStatus};
use domain::payment::{PaymentEvent, PaymentStatus};
use herald_nats::LogEntry;
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{aggregate_uuid, ApplyError, BOOKING, PAYMENT};

pub(crate) use fold::Fold;

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

/// Applies log entries in order to the dashboard totals; chat entries change
/// nothing. Each aggregate's status moves entry by entry (runs of new
/// bookings in one statement each), while the totals'
/// moves are gathered and written once at the end.
pub(crate) async fn apply_all(
    conn: &mut PgConnection,
    entries: &[LogEntry],
) -> Result<(), ApplyError> {
    let mut totals = Totals::default();
    let mut requested = Vec::new();
    for entry in entries {
        match entry.aggregate_type.as_str() {
            BOOKING => {
                let booking_id = aggregate_uuid(entry)?;
                let status = match crate::decode::<BookingEvent>(entry)? {
                    BookingEvent::BookingRequested { .. } => {
                        requested.push(booking_id);
                        continue;
                    }
                    BookingEvent::DoctorAssigned { .. } => BookingStatus::Assigned,
                    BookingEvent::BookingCompleted { .. } => BookingStatus::Completed,
                    BookingEvent::BookingCancelled { .. } => BookingStatus::Cancelled,
                    // Being paid is a flag beside the status, not a status.
                    BookingEvent::BookingPaid { .. } => continue,
                };
                count_requested(conn, &mut requested, &mut totals).await?;
                move_booking(conn, booking_id, status, &mut totals).await?;
            }
            PAYMENT => apply_payment(conn, entry, &mut totals).await?,
            _ => {}
        }
    }
    count_requested(conn, &mut requested, &mut totals).await?;
    totals.write(conn).await?;
    Ok(())
}

/// Counts a run of new bookings as pending, in one statement, and empties
/// it.
async fn count_requested(
    conn: &mut PgConnection,
    requested: &mut Vec<Uuid>,
    totals: &mut Totals,
) -> Result<(), sqlx::Error> {
    if requested.is_empty() {
        return Ok(());
    }
    let pending = BookingStatus::Pending.as_str();
    let inserted = sqlx::query(
        "INSERT INTO rm_summary_bookings (booking_id, status)
         SELECT booking_id, $2 FROM unnest($1::uuid[]) AS r (booking_id)",
    )
    .bind(std::mem::take(requested))
    .bind(pending)
    .execute(&mut *conn)
    .await?;
    for _ in 0..inserted.rows_affected() {
        totals.count_in(BOOKINGS, pending);
    }
    Ok(())
}

/// Moves a booking to `status`, unless it is there already.
async fn move_booking(
    conn: &mut PgConnection,
    booking_id: Uuid,
    status: BookingStatus,
    totals: &mut Totals,
) -> Result<(), sqlx::Error> {
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
        totals.count_out(BOOKINGS, &from);
        totals.count_in(BOOKINGS, status.as_str());
    }
    Ok(())
}

/// Applies one payment entry, moving `totals`.
async fn apply_payment(
    conn: &mut PgConnection,
    entry: &LogEntry,
    totals: &mut Totals,
) -> Result<(), ApplyError> {
    let payment_id = aggregate_uuid(entry)?;
    let status = match crate::decode::<PaymentEvent>(entry)? {
        PaymentEvent::PaymentInitiated { amount, .. } => {
            let pending = PaymentStatus::Pending.as_str();
            sqlx::query(
                "INSERT INTO rm_summary_payments (payment_id, status, amount_minor, currency)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(payment_id)
            .bind(pending)
            .bind(amount.amount_minor())
            .bind(amount.currency().as_str())
            .execute(&mut *conn)
            .await?;
            totals.count_in(PAYMENTS, pending);
            return Ok(());
        }
        other => other.status_after(),
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
        totals.count_out(PAYMENTS, &from);
        totals.count_in(PAYMENTS, status.as_str());
        totals.move_revenue(status, &currency, amount_minor);
    }
    Ok(())
}

/// How a batch moves the totals: counts per kind and status, and money per
/// currency.
#[derive(Debug, Default)]
struct Totals {
    counts: BTreeMap<(&'static str, String), i64>,
    revenue: BTreeMap<String, (i64, i64)>,
}

impl Totals {
    /// Counts one more aggregate in `status`.
    fn count_in(&mut self, kind: &'static str, status: &str) {
        *self.counts.entry((kind, status.to_owned())).or_default() += 1;
    }

    /// Counts one aggregate fewer in `status`, which it was counted in before.
    fn count_out(&mut self, kind: &'static str, status: &str) {
        *self.counts.entry((kind, status.to_owned())).or_default() -= 1;
    }

    /// Moves revenue for a payment of `amount_minor` in `currency` that
    /// reached `status`: money is kept once it succeeds, returned once
    /// refunded.
    fn move_revenue(&mut self, status: PaymentStatus, currency: &str, amount_minor: i64) {
        match status {
            PaymentStatus::Succeeded => self.add_to_revenue(currency, amount_minor, 0),
            PaymentStatus::Refunded => self.add_to_revenue(currency, 0, amount_minor),
            PaymentStatus::Pending | PaymentStatus::Failed | PaymentStatus::RefundPending => {}
        }
    }

    fn add_to_revenue(&mut self, currency: &str, succeeded_minor: i64, refunded_minor: i64) {
        let total = self.revenue.entry(currency.to_owned()).or_default();
        total.0 += succeeded_minor;
        total.1 += refunded_minor;
    }

    /// Writes the moves, one statement for the counts and one for revenue. A
    /// count first moved in this batch gets its row, as it would have entry
    /// by entry.
    async fn write(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.counts.is_empty() {
            let (keys, moves): (Vec<_>, Vec<i64>) = self.counts.into_iter().unzip();
            let (kinds, statuses): (Vec<&str>, Vec<String>) = keys.into_iter().unzip();
            sqlx::query(
                "WITH moves AS (
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS m (kind, status, delta)
                 ), moved AS (
                     UPDATE rm_summary_counts c SET count = c.count + m.delta
                       FROM moves m
                      WHERE c.kind = m.kind AND c.status = m.status
                     RETURNING c.kind, c.status
                 )
                 INSERT INTO rm_summary_counts (kind, status, count)
                 SELECT kind, status, delta FROM moves m
                  WHERE delta >= 0
                    AND NOT EXISTS (SELECT 1 FROM moved WHERE moved.kind = m.kind AND moved.status = m.status)",
            )
            .bind(kinds)
            .bind(statuses)
            .bind(moves)
            .execute(&mut *conn)
            .await?;
        }
        if !self.revenue.is_empty() {
            let (currencies, amounts): (Vec<String>, Vec<(i64, i64)>) =
                self.revenue.into_iter().unzip();
            let (succeeded, refunded): (Vec<i64>, Vec<i64>) = amounts.into_iter().unzip();
            sqlx::query(
                "INSERT INTO rm_summary_revenue AS r (currency, succeeded_minor, refunded_minor)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                 ON CONFLICT (currency) DO UPDATE
                    SET succeeded_minor = r.succeeded_minor + EXCLUDED.succeeded_minor,
                        refunded_minor = r.refunded_minor + EXCLUDED.refunded_minor",
            )
            .bind(currencies)
            .bind(succeeded)
            .bind(refunded)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
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
pub async fn get(conn: &mut PgConnection) -> Result<Summary, sqlx::Error> {
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
            .fetch_all(&mut *conn)
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
    .fetch_all(conn)
    .await?;
    Ok(Summary {
        bookings_by_status,
        payments_by_status,
        revenue,
    })
}
