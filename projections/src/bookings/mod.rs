//! The bookings read model: bookings by patient, doctor and status, newest
//! first, with whether they are paid and how their payment stands.
//!
//! A booking's payment state comes from payment events, which this projection
//! also follows; it keeps its own small map from payment to booking rather
//! than reading the payments projection, whose progress is independent.

mod fold;

use chrono::{DateTime, Utc};
use domain::booking::{BookingEvent, BookingStatus};
use domain::payment::{PaymentEvent, PaymentStatus};
use domain::values::CallType;
use herald_nats::LogEntry;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

pub(crate) use fold::Fold;

use crate::{
    aggregate_uuid, name_of, push_list_head, ApplyError, ListHead, Projection, NAMES_VERSION,
};

use crate::{BOOKING, PAYMENT};

/// A booking as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct BookingRow {
    /// The booking's id.
    pub id: Uuid,
    /// Who receives the visit.
    pub patient_id: Uuid,
    /// The patient's name; `null` for a user without an account.
    pub patient_name: Option<String>,
    /// The doctor who took it, once assigned.
    pub doctor_id: Option<Uuid>,
    /// The doctor's name, once assigned.
    pub doctor_name: Option<String>,
    /// The visit's type.
    #[schema(value_type = CallType)]
    pub call_type: String,
    /// Where to go.
    pub address: String,
    /// The price in minor units.
    pub amount_minor: i64,
    /// The price's ISO 4217 currency.
    pub currency: String,
    /// The agreed time, for scheduled visits.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Where the booking is in its life.
    #[schema(value_type = BookingStatus)]
    pub status: String,
    /// Whether a payment for it succeeded; stays set after a refund, which
    /// `payment_status` shows.
    pub paid: bool,
    /// The payment that settled it, else the latest one started for it.
    pub payment_id: Option<Uuid>,
    /// That payment's status, `null` before any payment was started.
    #[schema(value_type = Option<PaymentStatus>)]
    pub payment_status: Option<String>,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// When the patient asked for it.
    pub requested_at: DateTime<Utc>,
    /// When the latest event that changed it was stored.
    pub updated_at: DateTime<Utc>,
    /// The paging key: the log position of its request. Clients get it only
    /// wrapped in an opaque cursor.
    #[serde(skip)]
    pub created_position: i64,
    /// The log position of the latest event that changed it: its ETag,
    /// with the version of the names shown.
    #[serde(skip)]
    pub version: i64,
    /// See [`crate::NAMES_VERSION`]; read with one booking, and with a list
    /// in its head.
    #[serde(skip)]
    #[sqlx(default)]
    pub names_version: i64,
}

/// Which bookings to list; every field given narrows the list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookingFilter {
    /// Only this patient's bookings.
    pub patient_id: Option<Uuid>,
    /// Only bookings assigned to this doctor.
    pub doctor_id: Option<Uuid>,
    /// Only bookings in this status.
    pub status: Option<BookingStatus>,
}

/// Applies log entries in order to the booking tables; entries of chats
/// change nothing. Runs of new bookings are written in one statement each.
pub(crate) async fn apply_all(
    conn: &mut PgConnection,
    entries: &[LogEntry],
) -> Result<(), ApplyError> {
    let mut requested = Requested::default();
    for entry in entries {
        match entry.aggregate_type.as_str() {
            BOOKING => {
                let booking_id = aggregate_uuid(entry)?;
                let event = crate::decode::<BookingEvent>(entry)?;
                if let Some(event) = requested.gather(entry, booking_id, event) {
                    requested.write(conn).await?;
                    apply_booking(conn, entry, booking_id, event).await?;
                }
            }
            PAYMENT => {
                requested.write(conn).await?;
                let payment_id = aggregate_uuid(entry)?;
                let event = crate::decode::<PaymentEvent>(entry)?;
                apply_payment(conn, entry, payment_id, event).await?;
            }
            _ => {}
        }
    }
    requested.write(conn).await?;
    Ok(())
}

/// New bookings gathered from a run of `BookingRequested` entries.
#[derive(Debug, Default)]
struct Requested {
    booking_ids: Vec<Uuid>,
    patient_ids: Vec<Uuid>,
    call_types: Vec<&'static str>,
    addresses: Vec<String>,
    amounts_minor: Vec<i64>,
    currencies: Vec<String>,
    scheduled_at: Vec<Option<DateTime<Utc>>>,
    requested_at: Vec<DateTime<Utc>>,
    positions: Vec<i64>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl Requested {
    /// Adds a `BookingRequested` to the run; any other event is handed back.
    fn gather(
        &mut self,
        entry: &LogEntry,
        booking_id: Uuid,
        event: BookingEvent,
    ) -> Option<BookingEvent> {
        let BookingEvent::BookingRequested {
            patient_id,
            call_type,
            address,
            price,
            scheduled_at,
            requested_at,
            ..
        } = event
        else {
            return Some(event);
        };
        self.booking_ids.push(booking_id);
        self.patient_ids.push(patient_id);
        self.call_types.push(call_type.as_str());
        self.addresses.push(address.as_str().to_owned());
        self.amounts_minor.push(price.amount_minor());
        self.currencies.push(price.currency().as_str().to_owned());
        self.scheduled_at.push(scheduled_at);
        self.requested_at.push(requested_at);
        self.positions.push(entry.position);
        self.recorded_at.push(entry.recorded_at);
        None
    }

    /// Inserts the bookings gathered so far, pending and unpaid, and starts
    /// a new run.
    async fn write(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.booking_ids.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(self);
        sqlx::query(
            "INSERT INTO rm_bookings (booking_id, patient_id, doctor_id, call_type, address,
                                      amount_minor, currency, scheduled_at, status, paid,
                                      payment_id, payment_status, cancel_reason,
                                      requested_at, created_position, updated_at, version)
             SELECT r.booking_id, r.patient_id, NULL, r.call_type, r.address, r.amount_minor,
                    r.currency, r.scheduled_at, $11, false, NULL, NULL, NULL,
                    r.requested_at, r.position, r.recorded_at, r.position
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                           $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bigint[],
                           $10::timestamptz[])
                    AS r (booking_id, patient_id, call_type, address, amount_minor, currency,
                          scheduled_at, requested_at, position, recorded_at)
             ORDER BY r.position",
        )
        .bind(run.booking_ids)
        .bind(run.patient_ids)
        .bind(run.call_types)
        .bind(run.addresses)
        .bind(run.amounts_minor)
        .bind(run.currencies)
        .bind(run.scheduled_at)
        .bind(run.requested_at)
        .bind(run.positions)
        .bind(run.recorded_at)
        .bind(BookingStatus::Pending.as_str())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

async fn apply_booking(
    conn: &mut PgConnection,
    entry: &LogEntry,
    booking_id: Uuid,
    event: BookingEvent,
) -> Result<(), sqlx::Error> {
    match event {
        // Gathered into a run of new bookings by `apply_all` instead.
        BookingEvent::BookingRequested { .. } => {}
        BookingEvent::DoctorAssigned { doctor_id, .. } => {
            set_status(conn, entry, booking_id, BookingStatus::Assigned, doctor_id).await?;
        }
        BookingEvent::BookingCompleted { doctor_id, .. } => {
            set_status(conn, entry, booking_id, BookingStatus::Completed, doctor_id).await?;
        }
        BookingEvent::BookingCancelled { reason, .. } => {
            sqlx::query(
                "UPDATE rm_bookings
                    SET status = $2, cancel_reason = $3, updated_at = $4, version = $5
                  WHERE booking_id = $1",
            )
            .bind(booking_id)
            .bind(BookingStatus::Cancelled.as_str())
            .bind(reason.as_str())
            .bind(entry.recorded_at)
            .bind(entry.position)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::BookingPaid { payment_id, .. } => {
            // The payment's own events came first; should they be missing, a
            // payment that paid a booking has by definition succeeded.
            sqlx::query(
                "UPDATE rm_bookings
                    SET paid = true, payment_id = $2,
                        payment_status = COALESCE(
                            (SELECT status FROM rm_booking_payments WHERE payment_id = $2), $3),
                        updated_at = $4, version = $5
                  WHERE booking_id = $1",
            )
            .bind(booking_id)
            .bind(payment_id)
            .bind(PaymentStatus::Succeeded.as_str())
            .bind(entry.recorded_at)
            .bind(entry.position)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn set_status(
    conn: &mut PgConnection,
    entry: &LogEntry,
    booking_id: Uuid,
    status: BookingStatus,
    doctor_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rm_bookings SET status = $2, doctor_id = $3, updated_at = $4, version = $5
          WHERE booking_id = $1",
    )
    .bind(booking_id)
    .bind(status.as_str())
    .bind(doctor_id)
    .bind(entry.recorded_at)
    .bind(entry.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply_payment(
    conn: &mut PgConnection,
    entry: &LogEntry,
    payment_id: Uuid,
    event: PaymentEvent,
) -> Result<(), sqlx::Error> {
    let status = match event {
        PaymentEvent::PaymentInitiated {
            payment_id,
            booking_id,
            ..
        } => {
            let pending = PaymentStatus::Pending.as_str();
            sqlx::query(
                "INSERT INTO rm_booking_payments (payment_id, booking_id, status)
                 VALUES ($1, $2, $3)",
            )
            .bind(payment_id)
            .bind(booking_id)
            .bind(pending)
            .execute(&mut *conn)
            .await?;
            // Once paid, the booking keeps showing the payment that paid it.
            sqlx::query(
                "UPDATE rm_bookings
                    SET payment_id = $2, payment_status = $3, updated_at = $4, version = $5
                  WHERE booking_id = $1 AND NOT paid",
            )
            .bind(booking_id)
            .bind(payment_id)
            .bind(pending)
            .bind(entry.recorded_at)
            .bind(entry.position)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        other => other.status_after(),
    };
    sqlx::query(
        "WITH link AS (
             UPDATE rm_booking_payments SET status = $2 WHERE payment_id = $1
          RETURNING booking_id)
         UPDATE rm_bookings b SET payment_status = $2, updated_at = $3, version = $4
           FROM link
          WHERE b.booking_id = link.booking_id AND b.payment_id = $1",
    )
    .bind(payment_id)
    .bind(status.as_str())
    .bind(entry.recorded_at)
    .bind(entry.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The columns of [`BookingRow`] and `more`, from `rm_bookings b`.
fn select_bookings(more: &str) -> String {
    format!(
        "SELECT b.booking_id AS id, b.patient_id, {} AS patient_name, b.doctor_id,
                {} AS doctor_name, b.call_type, b.address, b.amount_minor, b.currency,
                b.scheduled_at, b.status, b.paid, b.payment_id, b.payment_status,
                b.cancel_reason, b.requested_at, b.updated_at, b.created_position, b.version
                {more}
           FROM rm_bookings b",
        name_of("b.patient_id"),
        name_of("b.doctor_id"),
    )
}

/// Up to `limit` bookings matching `filter`, newest first, with the position
/// the bookings projection had reached when they were read: the page's
/// version, from the same snapshot as its rows. Pass the `created_position`
/// of the last row of a page as `after_cursor` to get the next one; new
/// bookings never shift a page, since positions only grow.
pub async fn list<'c>(
    executor: impl PgExecutor<'c>,
    filter: BookingFilter,
    after_cursor: Option<i64>,
    limit: i64,
) -> Result<(ListHead, Vec<BookingRow>), sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new("SELECT head.*, page.* FROM (");
    push_head(&mut query, filter);
    query.push(") head LEFT JOIN LATERAL (");
    // The names' version is the head's.
    query.push(select_bookings(""));
    // Only the conditions in use are written, so each query matches one of
    // the (column, created_position) indexes.
    query.push(" WHERE true");
    if let Some(patient_id) = filter.patient_id {
        query.push(" AND patient_id = ").push_bind(patient_id);
    }
    if let Some(doctor_id) = filter.doctor_id {
        query.push(" AND doctor_id = ").push_bind(doctor_id);
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(cursor) = after_cursor {
        query.push(" AND created_position < ").push_bind(cursor);
    }
    query
        .push(" ORDER BY created_position DESC LIMIT ")
        .push_bind(limit)
        .push(") page ON true");
    let rows = query.build().fetch_all(executor).await?;
    let (head, page) = crate::head_and_page::<ListHead, BookingRow>(&rows)?.unwrap_or_default();
    Ok((head, page))
}

/// `SELECT` of the one-row [`ListHead`] of the bookings `filter` lists. Of
/// one patient's bookings, whatever else narrows them, the newest version
/// among all of them: a booking never changes patient, so any change to such
/// a list, a booking added or one changing status or doctor, moves it, while
/// other patients' bookings and other read models' events leave it be. Of any
/// other list, the projection's checkpoint, since a booking can leave a
/// doctor's or a status's list without any of the rows left in it changing.
fn push_head(query: &mut QueryBuilder<'_, Postgres>, filter: BookingFilter) {
    match filter.patient_id {
        Some(patient_id) => {
            query
                .push("SELECT COALESCE((SELECT max(version) FROM rm_bookings WHERE patient_id = ")
                .push_bind(patient_id)
                .push(format_args!("), 0) AS position, {NAMES_VERSION}"));
        }
        None => push_list_head(query, Projection::Bookings),
    }
}

/// The [`ListHead`] of the bookings `filter` lists now (see [`push_head`]).
pub async fn head<'c>(
    executor: impl PgExecutor<'c>,
    filter: BookingFilter,
) -> Result<ListHead, sqlx::Error> {
    let mut query = QueryBuilder::new("");
    push_head(&mut query, filter);
    query.build_query_as().fetch_one(executor).await
}

/// What one booking's answer depends on, and who may see it: read without
/// the rest of the row, for a caller who may hold its answer already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct BookingVersion {
    /// The patient.
    pub patient_id: Uuid,
    /// The doctor assigned, if any.
    pub doctor_id: Option<Uuid>,
    /// See [`BookingRow::version`].
    pub version: i64,
    /// See [`BookingRow::names_version`].
    pub names_version: i64,
}

/// The version of one booking, whoever asks; callers check visibility with
/// its `patient_id` and `doctor_id`.
pub async fn version<'c>(
    executor: impl PgExecutor<'c>,
    booking_id: Uuid,
) -> Result<Option<BookingVersion>, sqlx::Error> {
    static QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT b.patient_id, b.doctor_id, b.version, {NAMES_VERSION}
               FROM rm_bookings b WHERE b.booking_id = $1"
        )
    });
    sqlx::query_as::<_, BookingVersion>(QUERY.as_str())
        .bind(booking_id)
        .fetch_optional(executor)
        .await
}

/// One booking, whoever asks; callers check visibility with its
/// `patient_id` and `doctor_id`.
pub async fn get<'c>(
    executor: impl PgExecutor<'c>,
    booking_id: Uuid,
) -> Result<Option<BookingRow>, sqlx::Error> {
    let select = select_bookings(&format!(", {NAMES_VERSION}"));
    sqlx::query_as::<_, BookingRow>(&format!("{select} WHERE b.booking_id = $1"))
        .bind(booking_id)
        .fetch_optional(executor)
        .await
}
