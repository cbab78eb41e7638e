//! The dashboard's time series: how many bookings were made, completed and
//! cancelled, how many messages were sent, and how much money was taken and
//! returned, per minute of the log's `recorded_at`; and when each chat last
//! had a message.
//!
//! Every figure is a counter in a bucket of one minute, so any coarser series
//! (per hour, per day) is a sum over its minutes in the query, and the page
//! never scans bookings, payments or messages. To know how much a payment's
//! success or refund moves, the projection remembers each payment's amount in
//! a table of its own.

mod fold;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use domain::chat::ChatEvent;
use domain::payment::PaymentEvent;
use herald_nats::LogEntry;
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{aggregate_uuid, ApplyError, CHAT, PAYMENT};

pub(crate) use fold::Fold;

/// The event types counted per minute in `rm_activity_counts`, by their
/// names in the log.
const COUNTED: [&str; 4] = [BOOKED, COMPLETED, CANCELLED, MESSAGES];
/// `rm_activity_counts.kind` of bookings made.
const BOOKED: &str = "BookingRequested";
/// `rm_activity_counts.kind` of bookings completed.
const COMPLETED: &str = "BookingCompleted";
/// `rm_activity_counts.kind` of bookings cancelled.
const CANCELLED: &str = "BookingCancelled";
/// `rm_activity_counts.kind` of chat messages sent.
const MESSAGES: &str = "MessageSent";
/// The payment events that tell an amount or move revenue.
const MONEY: [&str; 3] = ["PaymentInitiated", "PaymentSucceeded", "PaymentRefunded"];

/// How far back a chat's last message keeps it among the active chats.
const ACTIVE_CHAT: TimeDelta = TimeDelta::hours(1);
/// Minutes in the messages-per-minute series.
const MINUTES: i64 = 60;
/// Hours in the per-hour series.
const HOURS: i64 = 24;
/// Days in the per-day series.
const DAYS: i64 = 14;

/// Whether an event of this type changes the activity read model.
pub(crate) fn follows(event_type: &str) -> bool {
    COUNTED.contains(&event_type) || MONEY.contains(&event_type)
}

/// The minute an event recorded at `at` is counted in.
fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
    // Truncating a UTC time to a whole minute cannot overflow.
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

/// What one batch (or a whole log) moves: counts per kind and minute, money
/// per currency and minute, and each chat's last message.
#[derive(Debug, Default)]
struct Moves {
    counts: BTreeMap<(&'static str, DateTime<Utc>), i64>,
    chats: HashMap<Uuid, DateTime<Utc>>,
}

impl Moves {
    /// Counts an entry of a counted type; true when it was one.
    fn count(&mut self, event_type: &str, recorded_at: DateTime<Utc>) -> bool {
        let Some(kind) = COUNTED.into_iter().find(|kind| *kind == event_type) else {
            return false;
        };
        *self.counts.entry((kind, minute(recorded_at))).or_default() += 1;
        true
    }

    /// Notes a message in `chat_id` at `at`.
    fn message(&mut self, chat_id: Uuid, at: DateTime<Utc>) {
        let last = self.chats.entry(chat_id).or_insert(at);
        *last = (*last).max(at);
    }
}

/// A success or refund of a payment whose amount the read model knows.
struct MoneyMove {
    payment_id: Uuid,
    bucket: DateTime<Utc>,
    refund: bool,
}

/// Applies log entries in order: the counts, chats and money they move are
/// gathered and written in a few statements at the end.
pub(crate) async fn apply_all(
    conn: &mut PgConnection,
    entries: &[LogEntry],
) -> Result<(), ApplyError> {
    let mut moves = Moves::default();
    let mut initiated: Vec<(Uuid, i64, String)> = Vec::new();
    let mut money: Vec<MoneyMove> = Vec::new();
    for entry in entries {
        let counted = moves.count(&entry.event_type, entry.recorded_at);
        match entry.aggregate_type.as_str() {
            CHAT if counted => {
                // Read like every chat projection reads it, so that an event
                // no one can read is set aside here too, not counted.
                crate::decode::<ChatEvent>(entry)?;
                moves.message(aggregate_uuid(entry)?, entry.recorded_at);
            }
            PAYMENT if MONEY.contains(&entry.event_type.as_str()) => {
                let payment_id = aggregate_uuid(entry)?;
                match crate::decode::<PaymentEvent>(entry)? {
                    PaymentEvent::PaymentInitiated { amount, .. } => initiated.push((
                        payment_id,
                        amount.amount_minor(),
                        amount.currency().as_str().to_owned(),
                    )),
                    PaymentEvent::PaymentSucceeded { .. }
                    | PaymentEvent::PaymentRefunded { .. } => {
                        money.push(MoneyMove {
                            payment_id,
                            bucket: minute(entry.recorded_at),
                            refund: entry.event_type == "PaymentRefunded",
                        });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    write_payments(conn, initiated).await?;
    write_money(conn, money).await?;
    write_counts(conn, moves.counts).await?;
    write_chats(conn, moves.chats).await?;
    Ok(())
}

async fn write_payments(
    conn: &mut PgConnection,
    initiated: Vec<(Uuid, i64, String)>,
) -> Result<(), sqlx::Error> {
    if initiated.is_empty() {
        return Ok(());
    }
    let (ids, rest): (Vec<Uuid>, Vec<(i64, String)>) =
        initiated.into_iter().map(|(id, a, c)| (id, (a, c))).unzip();
    let (amounts, currencies): (Vec<i64>, Vec<String>) = rest.into_iter().unzip();
    sqlx::query(
        "INSERT INTO rm_activity_payments (payment_id, amount_minor, currency)
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[])",
    )
    .bind(ids)
    .bind(amounts)
    .bind(currencies)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds each success's amount to its minute's money taken, and each refund's
/// to its minute's money returned, in one statement.
async fn write_money(conn: &mut PgConnection, money: Vec<MoneyMove>) -> Result<(), sqlx::Error> {
    if money.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = money.iter().map(|m| m.payment_id).collect();
    let buckets: Vec<DateTime<Utc>> = money.iter().map(|m| m.bucket).collect();
    let refunds: Vec<bool> = money.iter().map(|m| m.refund).collect();
    sqlx::query(
        "INSERT INTO rm_activity_revenue AS r (currency, bucket, succeeded_minor, refunded_minor)
         SELECT p.currency, m.bucket,
                coalesce(sum(p.amount_minor) FILTER (WHERE NOT m.refund), 0),
                coalesce(sum(p.amount_minor) FILTER (WHERE m.refund), 0)
           FROM unnest($1::uuid[], $2::timestamptz[], $3::bool[]) AS m (payment_id, bucket, refund)
           JOIN rm_activity_payments p USING (payment_id)
          GROUP BY p.currency, m.bucket
         ON CONFLICT (currency, bucket) DO UPDATE
            SET succeeded_minor = r.succeeded_minor + EXCLUDED.succeeded_minor,
                refunded_minor = r.refunded_minor + EXCLUDED.refunded_minor",
    )
    .bind(ids)
    .bind(buckets)
    .bind(refunds)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_counts(
    conn: &mut PgConnection,
    counts: BTreeMap<(&'static str, DateTime<Utc>), i64>,
) -> Result<(), sqlx::Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let (keys, deltas): (Vec<_>, Vec<i64>) = counts.into_iter().unzip();
    let (kinds, buckets): (Vec<&str>, Vec<DateTime<Utc>>) = keys.into_iter().unzip();
    sqlx::query(
        "INSERT INTO rm_activity_counts AS c (kind, bucket, count)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[])
         ON CONFLICT (kind, bucket) DO UPDATE SET count = c.count + EXCLUDED.count",
    )
    .bind(kinds)
    .bind(buckets)
    .bind(deltas)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_chats(
    conn: &mut PgConnection,
    chats: HashMap<Uuid, DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    if chats.is_empty() {
        return Ok(());
    }
    let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = chats.into_iter().unzip();
    sqlx::query(
        "INSERT INTO rm_activity_chats AS c (chat_id, last_message_at)
         SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
         ON CONFLICT (chat_id) DO UPDATE
            SET last_message_at = greatest(c.last_message_at, EXCLUDED.last_message_at)",
    )
    .bind(ids)
    .bind(times)
    .execute(conn)
    .await?;
    Ok(())
}

/// The dashboard's time series, each bucket present (zero included) so a
/// chart's axis does not depend on history; times are UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Activity {
    /// Bookings made, completed and cancelled in each of the last 24 hours,
    /// the current one last.
    pub bookings_per_hour: Vec<BookingBucket>,
    /// The same in each of the last 14 days, today last.
    pub bookings_per_day: Vec<BookingBucket>,
    /// Revenue (money taken minus money returned) in each of the last 14
    /// days, per currency; only days and currencies that had any.
    pub revenue_per_day: Vec<RevenueBucket>,
    /// Chat messages sent in each of the last 60 minutes, the current one
    /// last.
    pub messages_per_minute: Vec<CountBucket>,
    /// Chats with a message in the last hour.
    pub active_chats: i64,
}

/// Bookings that moved in one stretch of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BookingBucket {
    /// Where the stretch starts.
    pub start: DateTime<Utc>,
    /// Bookings made.
    pub booked: i64,
    /// Bookings completed.
    pub completed: i64,
    /// Bookings cancelled.
    pub cancelled: i64,
}

/// How many of something happened in one stretch of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CountBucket {
    /// Where the stretch starts.
    pub start: DateTime<Utc>,
    /// How many.
    pub count: i64,
}

/// Revenue in one currency on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct RevenueBucket {
    /// The start of the day (UTC).
    pub start: DateTime<Utc>,
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units taken minus minor units returned that day.
    pub amount_minor: i64,
}

/// The stretches of `step` ending with the one holding `now`, `count` of them.
fn stretches(now: DateTime<Utc>, step: TimeDelta, count: i64) -> Vec<DateTime<Utc>> {
    let last = now.duration_trunc(step).unwrap_or(now);
    (0..count)
        .rev()
        .map(|back| last - step * back as i32)
        .collect()
}

/// The counts of `kinds` summed per `unit` (`minute`, `hour` or `day`) from
/// `since` on.
async fn sums(
    conn: &mut PgConnection,
    unit: &str,
    kinds: &[&str],
    since: DateTime<Utc>,
) -> Result<HashMap<(String, DateTime<Utc>), i64>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT kind, date_trunc($1, bucket, 'UTC') AS start, sum(count)::bigint
           FROM rm_activity_counts
          WHERE kind = ANY($2) AND bucket >= $3
          GROUP BY kind, start",
    )
    .bind(unit)
    .bind(kinds)
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, start, count)| ((kind, start), count))
        .collect())
}

async fn bookings(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    unit: &str,
    step: TimeDelta,
    count: i64,
) -> Result<Vec<BookingBucket>, sqlx::Error> {
    let starts = stretches(now, step, count);
    let since = starts.first().copied().unwrap_or(now);
    let sums = sums(conn, unit, &[BOOKED, COMPLETED, CANCELLED], since).await?;
    let of = |kind: &str, start: DateTime<Utc>| {
        sums.get(&(kind.to_owned(), start)).copied().unwrap_or(0)
    };
    Ok(starts
        .into_iter()
        .map(|start| BookingBucket {
            start,
            booked: of(BOOKED, start),
            completed: of(COMPLETED, start),
            cancelled: of(CANCELLED, start),
        })
        .collect())
}

/// The time series as of the activity projection's checkpoint, for windows
/// ending at `now`.
pub async fn get(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Activity, sqlx::Error> {
    let bookings_per_hour = bookings(conn, now, "hour", TimeDelta::hours(1), HOURS).await?;
    let bookings_per_day = bookings(conn, now, "day", TimeDelta::days(1), DAYS).await?;
    let days = stretches(now, TimeDelta::days(1), DAYS);
    let revenue_per_day = sqlx::query_as::<_, RevenueBucket>(
        "SELECT date_trunc('day', bucket, 'UTC') AS start, currency,
                sum(succeeded_minor - refunded_minor)::bigint AS amount_minor
           FROM rm_activity_revenue
          WHERE bucket >= $1
          GROUP BY start, currency
          ORDER BY start, currency",
    )
    .bind(days.first().copied().unwrap_or(now))
    .fetch_all(&mut *conn)
    .await?;
    let minutes = stretches(now, TimeDelta::minutes(1), MINUTES);
    let sent = sums(
        conn,
        "minute",
        &[MESSAGES],
        minutes.first().copied().unwrap_or(now),
    )
    .await?;
    let messages_per_minute = minutes
        .into_iter()
        .map(|start| CountBucket {
            start,
            count: sent
                .get(&(MESSAGES.to_owned(), start))
                .copied()
                .unwrap_or(0),
        })
        .collect();
    let active_chats: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_activity_chats WHERE last_message_at > $1")
            .bind(now - ACTIVE_CHAT)
            .fetch_one(conn)
            .await?;
    Ok(Activity {
        bookings_per_hour,
        bookings_per_day,
        revenue_per_day,
        messages_per_minute,
        active_chats,
    })
}
