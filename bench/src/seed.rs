//! A large, realistic event log made fast, for the replay and audit benchmarks:
//! the events are written by Postgres itself (`INSERT … SELECT
//! generate_series`) in the shapes Herald's domain stores, and the relay then
//! numbers and hashes them as it does any event. Nine in ten events are chat
//! traffic (chats of 100 events: creation, messages, every tenth a read
//! receipt); the rest are bookings requested, assigned and completed.

use sqlx::PgPool;

/// Events per chat: its creation and 99 messages or read receipts.
const CHAT_EVENTS: i64 = 100;
/// Events per booking: requested, assigned, completed.
const BOOKING_EVENTS: i64 = 3;

/// `ts` as the domain writes timestamps: RFC 3339 UTC with nanoseconds.
const STAMP: &str = r#"to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"000Z"')"#;

/// Inserts about `events` events (exactly, for any count of at least 100)
/// into an empty, migrated database and returns how many it inserted.
pub async fn seed(pool: &PgPool, events: i64) -> anyhow::Result<i64> {
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        existing == 0,
        "the database already holds {existing} events"
    );
    let chats = events * 9 / 10 / CHAT_EVENTS;
    let rest = events - chats * CHAT_EVENTS;
    let bookings = rest / BOOKING_EVENTS;
    let requests_only = rest - bookings * BOOKING_EVENTS;
    let mut inserted = insert_chats(pool, chats).await?;
    inserted += insert_bookings(pool, bookings, BOOKING_EVENTS, 0).await?;
    inserted += insert_bookings(pool, requests_only, 1, bookings).await?;
    sqlx::query("ANALYZE events").execute(pool).await?;
    Ok(inserted)
}

/// Chats of [`CHAT_EVENTS`] events, interleaved as live traffic is: every
/// chat's n-th event before any chat's (n+1)-th.
async fn insert_chats(pool: &PgPool, chats: i64) -> anyhow::Result<i64> {
    let sql = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Chat', chat::text, s,
                CASE WHEN s = 1 THEN 'ChatCreated' WHEN s % 10 = 1 THEN 'ReadUpTo' ELSE 'MessageSent' END,
                '1',
                CASE
                  WHEN s = 1 THEN jsonb_build_object('ChatCreated', jsonb_build_object(
                      'kind', 'group', 'title', 'Care team', 'chat_id', chat,
                      'members', jsonb_build_array(patient, doctor),
                      'created_at', {STAMP}, 'created_by', patient))
                  WHEN s % 10 = 1 THEN jsonb_build_object('ReadUpTo', jsonb_build_object(
                      'at', {STAMP}, 'user_id', doctor, 'up_to_seq', seq))
                  ELSE jsonb_build_object('MessageSent', jsonb_build_object(
                      'seq', seq, 'body', 'How are you feeling today? Note ' || seq || '.',
                      'author', author, 'sent_at', {STAMP},
                      'message_id', md5('message' || c || '/' || s)::uuid))
                END,
                jsonb_build_object('role', CASE WHEN author = patient THEN 'patient' ELSE 'doctor' END,
                                   'actor', author, 'causation_id', request, 'correlation_id', request)
           FROM generate_series(1, {CHAT_EVENTS}) AS s,
                generate_series(1, $1) AS c,
                LATERAL (SELECT md5('chat' || c)::uuid AS chat,
                                md5('patient' || c)::uuid AS patient,
                                md5('doctor' || (c % 500))::uuid AS doctor,
                                md5('request' || c || '/' || s)::uuid AS request,
                                (s - 1) - (s - 1) / 10 AS seq,
                                timestamptz '2026-11-01 09:00:00+00' + make_interval(secs => s * 60 + c * 0.001) AS t) AS k,
                LATERAL (SELECT CASE WHEN s % 10 = 1 OR s % 2 = 0 THEN doctor ELSE patient END AS author) AS a
          ORDER BY s, c"
    );
    Ok(sqlx::query(&sql)
        .bind(chats)
        .execute(pool)
        .await?
        .rows_affected() as i64)
}

/// Bookings of `steps` events each (requested, assigned, completed), numbered
/// from `first + 1`.
async fn insert_bookings(
    pool: &PgPool,
    bookings: i64,
    steps: i64,
    first: i64,
) -> anyhow::Result<i64> {
    if bookings == 0 {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Booking', booking::text, s,
                (ARRAY['BookingRequested', 'DoctorAssigned', 'BookingCompleted'])[s], '1',
                CASE s
                  WHEN 1 THEN jsonb_build_object('BookingRequested', jsonb_build_object(
                      'price', jsonb_build_object('currency', 'RUB', 'amount_minor', 150000),
                      'address', 'Tverskaya 1, Moscow', 'call_type', 'urgent',
                      'booking_id', booking, 'patient_id', patient,
                      'requested_at', {STAMP}, 'scheduled_at', NULL))
                  WHEN 2 THEN jsonb_build_object('DoctorAssigned', jsonb_build_object(
                      'at', {STAMP}, 'doctor_id', doctor, 'assigned_by', admin))
                  ELSE jsonb_build_object('BookingCompleted', jsonb_build_object(
                      'at', {STAMP}, 'doctor_id', doctor))
                END,
                jsonb_build_object('role', (ARRAY['patient', 'admin', 'doctor'])[s],
                                   'actor', (ARRAY[patient, admin, doctor])[s],
                                   'causation_id', request, 'correlation_id', request)
           FROM generate_series(1, $2) AS s,
                generate_series($3 + 1, $3 + $1) AS b,
                LATERAL (SELECT md5('booking' || b)::uuid AS booking,
                                md5('patient' || (b % 5000))::uuid AS patient,
                                md5('doctor' || (b % 500))::uuid AS doctor,
                                md5('admin')::uuid AS admin,
                                md5('booking request' || b || '/' || s)::uuid AS request,
                                timestamptz '2026-11-01 09:00:00+00' + make_interval(secs => s * 600 + b * 0.001) AS t) AS k
          ORDER BY s, b"
    );
    Ok(sqlx::query(&sql)
        .bind(bookings)
        .bind(steps)
        .bind(first)
        .execute(pool)
        .await?
        .rows_affected() as i64)
}
