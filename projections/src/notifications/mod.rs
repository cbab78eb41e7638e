//! The notifications read model: each person's feed of what happened that
//! concerns them, how far they have read it, and their settings.
//!
//! The rules ([`rules`]) decide what is worth a notification and to whom;
//! the live worker runs them over what it loads of the projection's own
//! tables for a batch, and a rebuild over the whole log ([`Fold`]). A
//! notification to everyone in an audience (a new booking waiting for a
//! doctor) is one row, shown to the roles the reads are configured with.
//! Every batch that adds notifications wakes the listeners of
//! [`WAKE_CHANNEL`] when it commits.

mod fold;
mod rules;

use chrono::{DateTime, Utc};
use domain::user::NotificationSettings;
use domain::values::{NotificationKind, Role};
use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use herald_nats::LogEntry;
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

pub(crate) use fold::Fold;
use rules::{At, Event, Knowledge, Notification, Parties, Person};

use crate::{ApplyError, BOOKING, CHAT, PAYMENT, USER};

/// The channel a batch that adds notifications is announced on, with no
/// payload: listeners read what is new from the table.
pub const WAKE_CHANNEL: &str = "herald_notifications";

/// `COPY` of notification rows, in the column order of [`push_notification`].
const COPY_NOTIFICATIONS: &str = "COPY rm_notifications (id, position, user_id, kind, booking_id,
                                                       payment_id, chat_id, messages, email,
                                                       broadcast, created_at)
                                  FROM STDIN (FORMAT binary)";

/// A log entry as the live worker or a rebuild reads it.
pub(crate) trait Entry {
    /// Its aggregate type and event type.
    fn types(&self) -> (&str, &str);
    /// Its event as `E`.
    fn event<E: serde::de::DeserializeOwned>(&self) -> Result<E, ApplyError>;
}

impl Entry for LogEntry {
    fn types(&self) -> (&str, &str) {
        (&self.aggregate_type, &self.event_type)
    }

    fn event<E: serde::de::DeserializeOwned>(&self) -> Result<E, ApplyError> {
        crate::decode(self)
    }
}

impl Entry for Stored<'_> {
    fn types(&self) -> (&str, &str) {
        (self.aggregate_type, self.event_type)
    }

    fn event<E: serde::de::DeserializeOwned>(&self) -> Result<E, ApplyError> {
        crate::decode_stored(self)
    }
}

/// Whether the rules look at events of this type: of a chat's events only
/// reminders, so messages are never decoded.
pub(crate) fn follows(aggregate_type: &str, event_type: &str) -> bool {
    aggregate_type != CHAT || event_type == "UnreadReminded"
}

/// The entry's event, when the rules look at it ([`follows`]).
pub(crate) fn event_of(entry: &impl Entry) -> Result<Option<Event>, ApplyError> {
    let (aggregate_type, event_type) = entry.types();
    if !follows(aggregate_type, event_type) {
        return Ok(None);
    }
    Ok(Some(match aggregate_type {
        BOOKING => Event::Booking(entry.event()?),
        PAYMENT => Event::Payment(entry.event()?),
        USER => Event::User(entry.event()?),
        CHAT => Event::Chat(entry.event()?),
        _ => return Ok(None),
    }))
}

/// Adds a notification to rows for [`COPY_NOTIFICATIONS`].
fn push_notification(rows: &mut Rows, n: &Notification) {
    fn uuid(rows: &mut Rows, id: Option<Uuid>) {
        match id {
            Some(id) => rows.uuid(id.as_bytes()),
            None => rows.null(),
        };
    }
    fn int8(rows: &mut Rows, value: Option<i64>) {
        match value {
            Some(value) => rows.int8(value),
            None => rows.null(),
        };
    }
    rows.row(11).uuid(n.id.as_bytes()).int8(n.position);
    uuid(rows, n.user_id);
    rows.text(Some(n.kind.as_str()));
    uuid(rows, n.booking_id);
    uuid(rows, n.payment_id);
    uuid(rows, n.chat_id);
    int8(rows, n.messages);
    rows.bool(n.email);
    int8(rows, n.broadcast);
    rows.timestamptz(Some(n.created_at));
}

/// Applies log entries in order: loads what the rules need to know about
/// the people, bookings and payments they name, runs the rules, and writes
/// back what changed and the notifications they made.
pub(crate) async fn apply_all(
    conn: &mut PgConnection,
    entries: &[LogEntry],
) -> Result<(), ApplyError> {
    let mut events = Vec::new();
    for entry in entries {
        if let Some(event) = event_of(entry)? {
            let at = At {
                position: entry.position,
                recorded_at: entry.recorded_at,
                aggregate_id: crate::aggregate_uuid(entry)?,
            };
            events.push((at, event));
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let mut knowledge = load(conn, &events).await?;
    let mut made = Vec::new();
    for (at, event) in events {
        knowledge.event(at, event, &mut made);
    }
    write(conn, &knowledge).await?;
    if !made.is_empty() {
        let mut rows = Rows::new();
        for notification in &made {
            push_notification(&mut rows, notification);
        }
        rows.copy_into(conn, COPY_NOTIFICATIONS).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WAKE_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// What the rules need to know for `events`, read from the projection's
/// tables: the bookings and payments they name, and everyone those concern.
async fn load(conn: &mut PgConnection, events: &[(At, Event)]) -> Result<Knowledge, sqlx::Error> {
    use domain::booking::BookingEvent;
    use domain::chat::ChatEvent;
    use domain::payment::PaymentEvent;

    let mut knowledge = Knowledge::default();
    let (mut bookings, mut payments, mut people) = (Vec::new(), Vec::new(), Vec::new());
    let mut broadcasts = false;
    for (at, event) in events {
        match event {
            Event::Booking(BookingEvent::BookingRequested { patient_id, .. }) => {
                broadcasts = true;
                people.push(*patient_id);
            }
            Event::Booking(BookingEvent::DoctorAssigned { doctor_id, .. }) => {
                bookings.push(at.aggregate_id);
                people.push(*doctor_id);
            }
            Event::Booking(_) => bookings.push(at.aggregate_id),
            Event::Payment(PaymentEvent::PaymentInitiated { patient_id, .. }) => {
                people.push(*patient_id);
            }
            Event::Payment(_) => payments.push(at.aggregate_id),
            Event::User(_) => people.push(at.aggregate_id),
            Event::Chat(ChatEvent::UnreadReminded { reminders, .. }) => {
                people.extend(reminders.iter().map(|reminder| reminder.user_id));
            }
            Event::Chat(_) => {}
        }
    }
    let rows: Vec<(Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT booking_id, patient_id, doctor_id FROM rm_notification_bookings
          WHERE booking_id = ANY($1)",
    )
    .bind(&bookings)
    .fetch_all(&mut *conn)
    .await?;
    for (booking_id, patient_id, doctor_id) in rows {
        people.push(patient_id);
        people.extend(doctor_id);
        let parties = Parties {
            patient_id,
            doctor_id,
        };
        knowledge.bookings.insert(booking_id, parties);
    }
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT payment_id, patient_id FROM rm_notification_payments WHERE payment_id = ANY($1)",
    )
    .bind(&payments)
    .fetch_all(&mut *conn)
    .await?;
    for (payment_id, patient_id) in rows {
        people.push(patient_id);
        knowledge.payments.insert(payment_id, patient_id);
    }
    let rows: Vec<PersonRow> = sqlx::query_as(
        "SELECT user_id, role, active, joined_at, read_up_to, settings
           FROM rm_notification_people WHERE user_id = ANY($1)",
    )
    .bind(&people)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        if let Some((user_id, person)) = row.into_person() {
            knowledge.people.insert(user_id, person);
        }
    }
    if broadcasts {
        knowledge.broadcasts = last_broadcast(&mut *conn).await?;
    }
    Ok(knowledge)
}

/// A row of `rm_notification_people` as read.
#[derive(sqlx::FromRow)]
struct PersonRow {
    user_id: Uuid,
    role: String,
    active: bool,
    joined_at: i64,
    read_up_to: i64,
    settings: Json<NotificationSettings>,
}

impl PersonRow {
    /// The person, unless the row names a role Herald no longer has.
    fn into_person(self) -> Option<(Uuid, Person)> {
        let role = self.role.parse::<Role>().ok()?;
        let person = Person {
            role,
            active: self.active,
            joined_at: self.joined_at,
            read_up_to: self.read_up_to,
            settings: self.settings.0,
        };
        Some((self.user_id, person))
    }
}

/// The count of the newest notification to an audience, 0 when there is none.
async fn last_broadcast<'c>(executor: impl PgExecutor<'c>) -> Result<i64, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT broadcast FROM rm_notifications WHERE user_id IS NULL
          ORDER BY position DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    Ok(last.unwrap_or(0))
}

/// Writes back the people, bookings and payments the rules changed.
async fn write(conn: &mut PgConnection, knowledge: &Knowledge) -> Result<(), sqlx::Error> {
    if !knowledge.changed_people.is_empty() {
        let mut columns = PeopleColumns::default();
        for user_id in &knowledge.changed_people {
            if let Some(person) = knowledge.people.get(user_id) {
                columns.push(*user_id, person);
            }
        }
        sqlx::query(
            "INSERT INTO rm_notification_people AS p
                    (user_id, role, active, joined_at, read_up_to, settings, feed_new_bookings)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bigint[],
                                  $5::bigint[], $6::jsonb[], $7::bool[])
             ON CONFLICT (user_id) DO UPDATE
                SET role = EXCLUDED.role, active = EXCLUDED.active, joined_at = EXCLUDED.joined_at,
                    read_up_to = EXCLUDED.read_up_to, settings = EXCLUDED.settings,
                    feed_new_bookings = EXCLUDED.feed_new_bookings",
        )
        .bind(columns.user_ids)
        .bind(columns.roles)
        .bind(columns.active)
        .bind(columns.joined_at)
        .bind(columns.read_up_to)
        .bind(columns.settings)
        .bind(columns.feed_new_bookings)
        .execute(&mut *conn)
        .await?;
    }
    if !knowledge.changed_bookings.is_empty() {
        let (mut ids, mut patients, mut doctors) = (Vec::new(), Vec::new(), Vec::new());
        for booking_id in &knowledge.changed_bookings {
            if let Some(parties) = knowledge.bookings.get(booking_id) {
                ids.push(*booking_id);
                patients.push(parties.patient_id);
                doctors.push(parties.doctor_id);
            }
        }
        sqlx::query(
            "INSERT INTO rm_notification_bookings AS b (booking_id, patient_id, doctor_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[])
             ON CONFLICT (booking_id) DO UPDATE SET doctor_id = EXCLUDED.doctor_id",
        )
        .bind(ids)
        .bind(patients)
        .bind(doctors)
        .execute(&mut *conn)
        .await?;
    }
    if !knowledge.changed_payments.is_empty() {
        let (ids, patients): (Vec<Uuid>, Vec<Uuid>) = knowledge
            .changed_payments
            .iter()
            .filter_map(|id| Some((*id, *knowledge.payments.get(id)?)))
            .unzip();
        sqlx::query(
            "INSERT INTO rm_notification_payments (payment_id, patient_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[])
             ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(ids)
        .bind(patients)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `rm_notification_people` rows as columns, for `unnest`.
#[derive(Default)]
struct PeopleColumns {
    user_ids: Vec<Uuid>,
    roles: Vec<&'static str>,
    active: Vec<bool>,
    joined_at: Vec<i64>,
    read_up_to: Vec<i64>,
    settings: Vec<Json<NotificationSettings>>,
    feed_new_bookings: Vec<bool>,
}

impl PeopleColumns {
    fn push(&mut self, user_id: Uuid, person: &Person) {
        self.user_ids.push(user_id);
        self.roles.push(person.role.as_str());
        self.active.push(person.active);
        self.joined_at.push(person.joined_at);
        self.read_up_to.push(person.read_up_to);
        self.settings.push(Json(person.settings.clone()));
        self.feed_new_bookings.push(person.feeds_new_bookings());
    }
}

/// A notification as its recipient reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct NotificationRow {
    /// The notification's id.
    pub id: Uuid,
    /// Its place in the caller's feed (the log position of what it tells
    /// of): newer ones have higher numbers; `POST /notifications/read` takes it.
    #[sqlx(rename = "position")]
    pub seq: i64,
    /// What it tells of.
    #[schema(value_type = NotificationKind)]
    pub kind: String,
    /// The booking it is about.
    pub booking_id: Option<Uuid>,
    /// The payment it is about.
    pub payment_id: Option<Uuid>,
    /// The chat it is about.
    pub chat_id: Option<Uuid>,
    /// How many messages a chat notification gathers.
    pub messages: Option<i64>,
    /// Whether the caller has read it.
    pub read: bool,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// A new notification, as it is pushed live and delivered outside Herald:
/// its recipient (none for an audience) and the notification.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Fresh {
    /// Whose it is; none for everyone in the audience of new bookings.
    pub user_id: Option<Uuid>,
    /// Whether its one recipient wanted it by e-mail when it happened.
    pub email: bool,
    /// The notification, unread.
    #[sqlx(flatten)]
    pub notification: NotificationRow,
}

/// Columns of [`Fresh`].
const FRESH: &str = "user_id, email, id, position, kind, booking_id, payment_id, chat_id,
                     messages, false AS read, created_at";

/// The notifications of the next positions after log position `after`,
/// oldest first: all of a position's or none, about `limit` of them. They are
/// written in position order, batch by batch, so a reader that goes on from
/// the last position it saw misses none.
pub async fn after<'c>(
    executor: impl PgExecutor<'c>,
    after: i64,
    limit: i64,
) -> Result<Vec<Fresh>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {FRESH} FROM rm_notifications
          WHERE position > $1
            AND position <= (SELECT max(position) FROM (
                    SELECT position FROM rm_notifications WHERE position > $1
                     ORDER BY position LIMIT $2) AS page)
          ORDER BY position, user_id"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The notification with `id`.
pub async fn by_id<'c>(
    executor: impl PgExecutor<'c>,
    id: Uuid,
) -> Result<Option<Fresh>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {FRESH} FROM rm_notifications WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Who reads a feed: the person, and whether notifications to the audience
/// of new bookings are theirs (their role is one it is configured for).
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    /// The person.
    pub user_id: Uuid,
    /// Whether they are in the audience of new bookings.
    pub in_audience: bool,
}

/// The reader's row, with their settings' word on audience notifications,
/// as a `WITH` clause for the queries below: `$1` the reader, `$2` whether
/// they are in the audience, `$3` the word of the default settings, which
/// are those of someone the projection has no row of.
const ME: &str = "WITH me AS (
    SELECT COALESCE(max(read_up_to), 0) AS read_up_to,
           COALESCE(max(joined_at), 0) AS joined_at,
           $2 AND COALESCE(bool_and(feed_new_bookings), $3) AS audience
      FROM rm_notification_people WHERE user_id = $1
)";

/// Whether the default settings let notifications of new bookings into a
/// feed.
fn new_bookings_by_default() -> bool {
    NotificationSettings::default().feed_on(NotificationKind::BookingRequested)
}

/// The reader's notifications older than `before` (all when none), newest
/// first, at most `limit`; only unread ones when `unread`.
pub async fn feed<'c>(
    executor: impl PgExecutor<'c>,
    reader: Reader,
    before: Option<i64>,
    unread: bool,
    limit: i64,
) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{ME}, page AS (
             (SELECT n.* FROM rm_notifications n, me
               WHERE n.user_id = $1 AND n.position < $4
                 AND n.position > CASE WHEN $5 THEN me.read_up_to ELSE 0 END
               ORDER BY n.position DESC LIMIT $6)
             UNION ALL
             (SELECT n.* FROM rm_notifications n, me
               WHERE n.user_id IS NULL AND me.audience AND n.position < $4
                 AND n.position > GREATEST(me.joined_at, CASE WHEN $5 THEN me.read_up_to ELSE 0 END)
               ORDER BY n.position DESC LIMIT $6)
         )
         SELECT p.id, p.position, p.kind, p.booking_id, p.payment_id, p.chat_id, p.messages,
                p.position <= me.read_up_to AS read, p.created_at
           FROM page p, me
          ORDER BY p.position DESC LIMIT $6"
    ))
    .bind(reader.user_id)
    .bind(reader.in_audience)
    .bind(new_bookings_by_default())
    .bind(before.unwrap_or(i64::MAX))
    .bind(unread)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// How many notifications the reader has not read.
pub async fn unread_count<'c>(
    executor: impl PgExecutor<'c>,
    reader: Reader,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "{ME}
         SELECT (SELECT count(*) FROM rm_notifications n
                  WHERE n.user_id = $1 AND n.position > me.read_up_to)
              + CASE WHEN me.audience THEN
                    COALESCE((SELECT broadcast FROM rm_notifications
                               WHERE user_id IS NULL ORDER BY position DESC LIMIT 1), 0)
                  - COALESCE((SELECT broadcast FROM rm_notifications
                               WHERE user_id IS NULL
                                 AND position <= GREATEST(me.read_up_to, me.joined_at)
                               ORDER BY position DESC LIMIT 1), 0)
                ELSE 0 END
           FROM me"
    ))
    .bind(reader.user_id)
    .bind(reader.in_audience)
    .bind(new_bookings_by_default())
    .fetch_one(executor)
    .await
}

/// A person's notification settings as the log has them, defaults for
/// someone it has none of.
pub async fn settings<'c>(
    executor: impl PgExecutor<'c>,
    user_id: Uuid,
) -> Result<NotificationSettings, sqlx::Error> {
    let settings: Option<Json<NotificationSettings>> =
        sqlx::query_scalar("SELECT settings FROM rm_notification_people WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(executor)
            .await?;
    Ok(settings.map(|json| json.0).unwrap_or_default())
}
