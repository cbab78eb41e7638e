//! A large, realistic event log made fast, for the replay and audit benchmarks:
//! the events are written by Postgres itself (`INSERT … SELECT
//! generate_series`) in the shapes Herald's domain stores, and the relay then
//! numbers and hashes them as it does any event. Nine in ten events are chat
//! traffic (chats of 100 events: creation, messages, every tenth a read
//! receipt); the rest are bookings requested, assigned and completed.
//!
//! And one long chat, for the benchmark of messages into a chat that already
//! holds many: [`seed_chat`] writes its events, made and folded by the
//! domain's own types, with the snapshot Herald would have taken of it.

use chrono::{TimeDelta, Utc};
use commands::Metadata;
use cqrs_es::{Aggregate, DomainEvent};
use domain::chat::{Chat, ChatEvent, MAX_GROUP_MEMBERS};
use domain::values::{Actor, ChatKind, ChatTitle, MessageBody, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

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

/// A chat [`seed_chat`] wrote: what a load needs to post into it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SeededChat {
    /// The chat.
    pub chat_id: Uuid,
    /// Its members, patients and doctors in turn, the creator first.
    pub members: Vec<Actor>,
    /// How many messages it holds.
    pub messages: u64,
}

/// Events inserted per statement.
const CHAT_BATCH: usize = 5_000;

/// Writes one group chat of `members` new people and `messages` messages,
/// written by the members in turn, into a migrated database, in one
/// transaction, with a snapshot of the chat at its last event (as if Herald
/// had taken one there), so that the first command on the chat loads as
/// quickly as any later one and not the whole log.
pub async fn seed_chat(pool: &PgPool, messages: u64, members: usize) -> anyhow::Result<SeededChat> {
    anyhow::ensure!(
        (1..=MAX_GROUP_MEMBERS).contains(&members),
        "a group chat has between 1 and {MAX_GROUP_MEMBERS} members"
    );
    let members: Vec<Actor> = (0..members)
        .map(|i| {
            let role = if i % 2 == 0 {
                Role::Patient
            } else {
                Role::Doctor
            };
            Actor::new(Uuid::new_v4(), role)
        })
        .collect();
    let chat_id = Uuid::now_v7();
    // A message a second, ending a minute ago.
    let opened = Utc::now() - TimeDelta::seconds(messages as i64 + 60);
    let mut log = ChatLog::new(chat_id);
    let title = ChatTitle::parse("Care team")?;
    let mut tx = pool.begin().await?;
    log.push(
        ChatEvent::ChatCreated {
            chat_id,
            kind: ChatKind::Group,
            title: Some(title),
            members: members.iter().map(|m| m.user_id).collect(),
            created_by: members[0].user_id,
            created_at: opened,
        },
        members[0],
    );
    for seq in 1..=messages {
        let author = members[seq as usize % members.len()];
        let body = MessageBody::parse(crate::herald::message_text(seq))?;
        log.push(
            ChatEvent::MessageSent {
                // A fresh id each: one id names one message in all of Herald.
                message_id: Uuid::new_v4(),
                seq,
                author: author.user_id,
                body: Some(body),
                attachments: vec![],
                sent_at: opened + TimeDelta::seconds(seq as i64),
            },
            author,
        );
        if log.pending() >= CHAT_BATCH {
            log.insert(&mut tx).await?;
        }
    }
    log.insert(&mut tx).await?;
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $3, 1, $4)",
    )
    .bind(Chat::TYPE)
    .bind(chat_id.to_string())
    .bind(log.sequence)
    .bind(serde_json::to_value(&log.chat)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE events").execute(pool).await?;
    Ok(SeededChat {
        chat_id,
        members,
        messages,
    })
}

/// A chat's events on their way into the store, and the chat they fold into.
struct ChatLog {
    id: String,
    chat: Chat,
    sequence: i64,
    sequences: Vec<i64>,
    types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
}

impl ChatLog {
    fn new(chat_id: Uuid) -> Self {
        Self {
            id: chat_id.to_string(),
            chat: Chat::default(),
            sequence: 0,
            sequences: Vec::new(),
            types: Vec::new(),
            versions: Vec::new(),
            payloads: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// The next event, by `actor`, stored as the event store stores it: the
    /// payload as serde writes the event, the metadata as a request's.
    fn push(&mut self, event: ChatEvent, actor: Actor) {
        let request = Uuid::now_v7().to_string();
        self.sequence += 1;
        self.sequences.push(self.sequence);
        self.types.push(event.event_type());
        self.versions.push(event.event_version());
        self.payloads.push(json!(event));
        self.metadata
            .push(json!(Metadata::for_request(actor, request).to_map()));
        self.chat.apply(event);
    }

    fn pending(&self) -> usize {
        self.sequences.len()
    }

    /// Inserts the pending events.
    async fn insert(&mut self, tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        sqlx::query(include_str!("seed_chat_events.sql"))
            .bind(Chat::TYPE)
            .bind(&self.id)
            .bind(std::mem::take(&mut self.sequences))
            .bind(std::mem::take(&mut self.types))
            .bind(std::mem::take(&mut self.versions))
            .bind(std::mem::take(&mut self.payloads))
            .bind(std::mem::take(&mut self.metadata))
            .execute(tx)
            .await?;
        Ok(())
    }
}
