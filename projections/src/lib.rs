//! Herald's read side: projections keep read models as pure functions of the log.
//!
//! Each projection is a [`herald_nats::follower::TransactionalFollower`] of
//! every event. A worker applies a batch of entries in one Postgres
//! transaction together with the projection's checkpoint (the log position);
//! an entry at or below the
//! checkpoint changes nothing. Positions are dense, so a
//! missing one is noticed, and read from Postgres, which stays the truth.

pub mod activity;
pub mod bookings;
pub mod chats;
mod checkpoint;
pub mod notifications;
pub mod payments;
mod rebuild;
mod replay;
pub mod summary;
mod worker;

use std::fmt;
use std::str::FromStr;

use herald_nats::log::Stored;
use herald_nats::LogEntry;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgExecutor, Postgres, QueryBuilder, Row};
use uuid::Uuid;

/// The aggregate types in the log, as the read models match them.
pub(crate) const CHAT: &str = domain::access::AggregateKind::Chat.as_str();
/// See [`CHAT`].
pub(crate) const BOOKING: &str = domain::access::AggregateKind::Booking.as_str();
/// See [`CHAT`].
pub(crate) const PAYMENT: &str = domain::access::AggregateKind::Payment.as_str();
/// See [`CHAT`].
pub(crate) const USER: &str = domain::access::AggregateKind::User.as_str();

pub use checkpoint::{checkpoint, checkpoints, dead_letters, retry_dead_letters, DeadLetter};
pub use herald_nats::follower::ApplyError;
pub use rebuild::rebuild_into;
pub use replay::{pending, plan, replay, ReplayError, ReplayReport};
pub use worker::Worker;

/// The people's names reads show beside their ids are not in the log but in
/// their accounts; this column is the version of all of them (migration
/// `profiles`), which grows with every change, so an answer that shows names
/// is tagged with it too.
pub(crate) const NAMES_VERSION: &str = "(SELECT version FROM account_names) AS names_version";

/// The name of the user in `column`, `null` for one without an account.
pub(crate) fn name_of(column: &str) -> String {
    format!("(SELECT a.name FROM accounts a WHERE a.user_id = {column})")
}

/// How far a list reaches: its read model's checkpoint, and the version of
/// the names it shows. A list's tag is made of both, read before its rows
/// (or with them), so that it is never newer than they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct ListHead {
    /// The projection's checkpoint.
    pub position: i64,
    /// The version of people's names.
    pub names_version: i64,
}

/// `SELECT` of the one-row [`ListHead`] of `projection`.
pub(crate) fn push_list_head(query: &mut QueryBuilder<'_, Postgres>, projection: Projection) {
    query.push("SELECT ");
    herald_nats::follower::checkpoint::push_position(query, projection.name());
    query.push(format_args!(" AS position, {NAMES_VERSION}"));
}

/// The [`ListHead`] of `projection` now.
pub async fn list_head<'c>(
    executor: impl PgExecutor<'c>,
    projection: Projection,
) -> Result<ListHead, sqlx::Error> {
    let mut query = QueryBuilder::new("");
    push_list_head(&mut query, projection);
    query.build_query_as().fetch_one(executor).await
}

/// A page read together with its head (what the reader is checked against,
/// or the page's version) in one statement, so both come from one snapshot:
/// the page `LEFT JOIN LATERAL`ed onto a one-row head. Every row repeats the
/// head; a page with no rows leaves one row whose `id` is null. `None` when
/// the head itself has no row.
pub(crate) fn head_and_page<H, R>(rows: &[PgRow]) -> Result<Option<(H, Vec<R>)>, sqlx::Error>
where
    H: for<'r> FromRow<'r, PgRow>,
    R: for<'r> FromRow<'r, PgRow>,
{
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut page = Vec::with_capacity(rows.len());
    for row in rows {
        if row.try_get::<Option<uuid::Uuid>, _>("id")?.is_some() {
            page.push(R::from_row(row)?);
        }
    }
    Ok(Some((H::from_row(first)?, page)))
}

/// The read models Herald keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// Chats, their members with unread counts, and messages.
    Chats,
    /// Bookings by patient, doctor and status, with their payment state.
    Bookings,
    /// Payments per booking.
    Payments,
    /// The admin dashboard's counts and revenue.
    Summary,
    /// Each person's notifications, how far they have read them, and their
    /// settings.
    Notifications,
    /// The dashboard's time series: counters per minute.
    Activity,
}

impl Projection {
    /// Every projection.
    pub const ALL: [Projection; 6] = [
        Projection::Chats,
        Projection::Bookings,
        Projection::Payments,
        Projection::Summary,
        Projection::Notifications,
        Projection::Activity,
    ];

    /// The name of its checkpoint and its dead letters.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Chats => "chats",
            Projection::Bookings => "bookings",
            Projection::Payments => "payments",
            Projection::Summary => "summary",
            Projection::Notifications => "notifications",
            Projection::Activity => "activity",
        }
    }

    /// The tables that hold this projection's read model, all written only by it.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Chats => &[
                "rm_chats",
                "rm_chat_members",
                "rm_chat_messages",
                "rm_chat_attachments",
            ],
            Projection::Bookings => &["rm_bookings", "rm_booking_payments"],
            Projection::Payments => &["rm_payments"],
            Projection::Summary => &[
                "rm_summary_counts",
                "rm_summary_revenue",
                "rm_summary_bookings",
                "rm_summary_payments",
            ],
            Projection::Notifications => &[
                "rm_notifications",
                "rm_notification_people",
                "rm_notification_bookings",
                "rm_notification_payments",
            ],
            Projection::Activity => &[
                "rm_activity_counts",
                "rm_activity_revenue",
                "rm_activity_payments",
                "rm_activity_chats",
            ],
        }
    }

    /// The aggregate types whose events this projection follows; a rebuild
    /// reads only their entries.
    pub fn aggregate_types(self) -> &'static [&'static str] {
        match self {
            Projection::Chats => &[CHAT],
            Projection::Bookings | Projection::Summary => &[BOOKING, PAYMENT],
            Projection::Payments => &[PAYMENT],
            Projection::Notifications => &[BOOKING, PAYMENT, CHAT, USER],
            Projection::Activity => &[BOOKING, PAYMENT, CHAT],
        }
    }

    /// Whether events of this type change the read model.
    pub fn follows(self, aggregate_type: &str, event_type: &str) -> bool {
        self.aggregate_types().contains(&aggregate_type)
            && match self {
                Projection::Notifications => notifications::follows(aggregate_type, event_type),
                Projection::Activity => activity::follows(event_type),
                _ => true,
            }
    }

    /// Applies one log entry inside the caller's transaction. Entries of events
    /// the projection does not follow change nothing.
    pub async fn apply(self, conn: &mut PgConnection, entry: &LogEntry) -> Result<(), ApplyError> {
        self.apply_all(conn, std::slice::from_ref(entry)).await
    }

    /// Applies log entries in order inside the caller's transaction, with the
    /// same effect as applying them one by one, in fewer statements where the
    /// projection can gather them.
    pub async fn apply_all(
        self,
        conn: &mut PgConnection,
        entries: &[LogEntry],
    ) -> Result<(), ApplyError> {
        match self {
            Projection::Chats => chats::apply_all(conn, entries).await,
            Projection::Bookings => bookings::apply_all(conn, entries).await,
            Projection::Summary => summary::apply_all(conn, entries).await,
            Projection::Notifications => notifications::apply_all(conn, entries).await,
            Projection::Activity => activity::apply_all(conn, entries).await,
            Projection::Payments => {
                for entry in entries {
                    payments::apply(conn, entry).await?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Projection {
    type Err = UnknownProjection;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Projection::ALL
            .into_iter()
            .find(|projection| projection.name() == name)
            .ok_or_else(|| UnknownProjection(name.to_owned()))
    }
}

/// A projection name that is not one of [`Projection::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown projection `{0}`; known: chats, bookings, payments, summary, notifications, activity"
)]
pub struct UnknownProjection(String);

/// Decodes an entry's payload into a domain event enum, brought up to the
/// current shape first when it was stored in an older one.
pub fn decode<E: serde::de::DeserializeOwned>(entry: &LogEntry) -> Result<E, ApplyError> {
    entry
        .decode()
        .map_err(|source| undecodable(&entry.event_type, entry.position, source))
}

/// [`decode`] of an entry read for a fold.
pub(crate) fn decode_stored<E: serde::de::DeserializeOwned>(
    entry: &Stored<'_>,
) -> Result<E, ApplyError> {
    entry
        .decode()
        .map_err(|source| undecodable(entry.event_type, entry.position, source))
}

/// The entry's aggregate id as a UUID, shared by every read model. An id that
/// is not a UUID is as undecodable as a malformed payload.
pub(crate) fn aggregate_uuid(entry: &LogEntry) -> Result<Uuid, ApplyError> {
    parse_aggregate_id(&entry.aggregate_id, &entry.event_type, entry.position)
}

/// [`aggregate_uuid`] of an entry read for a fold.
pub(crate) fn stored_aggregate_uuid(entry: &Stored<'_>) -> Result<Uuid, ApplyError> {
    parse_aggregate_id(entry.aggregate_id, entry.event_type, entry.position)
}

fn parse_aggregate_id(id: &str, event_type: &str, position: i64) -> Result<Uuid, ApplyError> {
    Uuid::parse_str(id).map_err(|err| {
        let source = <serde_json::Error as serde::de::Error>::custom(format!(
            "aggregate id `{id}` is not a UUID: {err}"
        ));
        undecodable(event_type, position, source)
    })
}

fn undecodable(event_type: &str, position: i64, source: serde_json::Error) -> ApplyError {
    ApplyError::Decode {
        event_type: event_type.to_owned(),
        position,
        source,
    }
}
