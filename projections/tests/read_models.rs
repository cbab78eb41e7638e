//! The read models fed with real domain events, as the log delivers them, and
//! read back through the queries the API uses.
#![allow(clippy::unwrap_used)]

use herald_nats::testing as support;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::booking::{BookingEvent, BookingStatus};
use domain::chat::ChatEvent;
use domain::payment::PaymentEvent;
use domain::values::{
    Address, CallType, ChatKind, ChatTitle, Currency, MessageBody, Money, PaymentMethod, Reason,
};
use herald_nats::LogEntry;
use projections::bookings::BookingFilter;
use projections::{bookings, chats, payments, summary, ApplyError, Projection};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// A log that applies every appended entry to every projection, in its own
/// transaction, as the workers do.
struct Log {
    pool: PgPool,
    entries: Vec<LogEntry>,
    sequences: HashMap<Uuid, i64>,
    _leftovers: support::Leftovers,
}

impl Log {
    async fn new() -> Self {
        let (pool, leftovers) = fresh_pool().await;
        Self {
            pool,
            entries: Vec::new(),
            sequences: HashMap::new(),
            _leftovers: leftovers,
        }
    }

    async fn chat(&mut self, chat_id: Uuid, event: ChatEvent) {
        self.append("Chat", chat_id, &event, json!({})).await;
    }

    async fn booking(&mut self, booking_id: Uuid, event: BookingEvent) {
        self.append("Booking", booking_id, &event, json!({})).await;
    }

    async fn payment(&mut self, payment_id: Uuid, event: PaymentEvent) {
        self.append("Payment", payment_id, &event, json!({})).await;
    }

    async fn append(
        &mut self,
        aggregate_type: &str,
        aggregate_id: Uuid,
        event: &impl Serialize,
        metadata: Value,
    ) {
        let sequence = self.sequences.entry(aggregate_id).or_insert(0);
        *sequence += 1;
        let position = i64::try_from(self.entries.len()).unwrap() + 1;
        let entry = entry(
            position,
            aggregate_type,
            aggregate_id,
            *sequence,
            event,
            metadata,
        );
        apply_all(&self.pool, std::slice::from_ref(&entry)).await;
        self.entries.push(entry);
    }
}

/// A pool on a fresh, migrated database, which is dropped when the test passes.
async fn fresh_pool() -> (PgPool, support::Leftovers) {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    (pool, support::Leftovers::new(Some(url), None))
}

/// An entry as the relay would publish it; the event type is the payload's tag.
fn entry(
    position: i64,
    aggregate_type: &str,
    aggregate_id: Uuid,
    sequence: i64,
    event: &impl Serialize,
    metadata: Value,
) -> LogEntry {
    let payload = serde_json::to_value(event).unwrap();
    let event_type = payload.as_object().unwrap().keys().next().unwrap().clone();
    LogEntry {
        position,
        event_id: position,
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_string(),
        sequence,
        event_type,
        event_version: "1".to_owned(),
        payload,
        metadata,
        recorded_at: at(1_000 + position),
    }
}

/// Applies entries to every projection as one batch in one transaction, as a
/// worker or a rebuild does.
async fn apply_all(pool: &PgPool, entries: &[LogEntry]) {
    let mut tx = pool.begin().await.unwrap();
    for projection in Projection::ALL {
        projection.apply_all(&mut tx, entries).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_763_700_000 + secs, 123_456_789).unwrap()
}

fn user(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const ALICE: u128 = 1;
const BOB: u128 = 2;
const CAROL: u128 = 3;
const DAN: u128 = 4;

fn created(chat_id: Uuid, members: &[u128]) -> ChatEvent {
    ChatEvent::ChatCreated {
        chat_id,
        kind: ChatKind::Group,
        title: Some(ChatTitle::parse("Ward 7").unwrap()),
        members: members.iter().copied().map(user).collect(),
        created_by: user(members[0]),
        created_at: at(1),
    }
}

fn sent(seq: u64, author: u128, body: &str) -> ChatEvent {
    ChatEvent::MessageSent {
        message_id: message_id(seq),
        seq,
        author: user(author),
        body: Some(MessageBody::parse(body).unwrap()),
        attachments: vec![],
        sent_at: at(10 + i64::try_from(seq).unwrap()),
    }
}

fn message_id(seq: u64) -> Uuid {
    Uuid::from_u128(1_000 + u128::from(seq))
}

fn deleted(seq: u64, by: u128) -> ChatEvent {
    ChatEvent::MessageDeleted {
        message_id: message_id(seq),
        seq,
        deleted_by: user(by),
        deleted_at: at(100),
    }
}

fn read(reader: u128, up_to_seq: u64) -> ChatEvent {
    ChatEvent::ReadUpTo {
        user_id: user(reader),
        up_to_seq,
        at: at(100),
    }
}

async fn unread(pool: &PgPool, chat_id: Uuid, reader: u128) -> Option<i64> {
    chats::list_for_user(pool, user(reader))
        .await
        .unwrap()
        .into_iter()
        .find(|chat| chat.id == chat_id)
        .map(|chat| chat.unread_count)
}

async fn unread_of_all(pool: &PgPool, chat_id: Uuid) -> [Option<i64>; 3] {
    [
        unread(pool, chat_id, ALICE).await,
        unread(pool, chat_id, BOB).await,
        unread(pool, chat_id, CAROL).await,
    ]
}

/// Whether user `n` belongs to the chat, as its readers are checked.
async fn member(pool: &PgPool, chat: Uuid, n: u128) -> bool {
    chats::access(pool, chat, user(n))
        .await
        .unwrap()
        .is_some_and(|access| access.member)
}

#[tokio::test]
async fn unread_counts_rise_with_others_messages_and_fall_with_reads_and_deletions() {
    let mut log = Log::new().await;
    let chat = Uuid::new_v4();
    log.chat(chat, created(chat, &[ALICE, BOB, CAROL])).await;
    assert_eq!(unread_of_all(&log.pool, chat).await, [Some(0); 3]);

    log.chat(chat, sent(1, ALICE, "one")).await;
    log.chat(chat, sent(2, ALICE, "two")).await;
    log.chat(chat, sent(3, ALICE, "three")).await;
    log.chat(chat, sent(4, BOB, "four")).await;
    assert_eq!(
        unread_of_all(&log.pool, chat).await,
        [Some(1), Some(3), Some(4)]
    );

    log.chat(chat, read(BOB, 2)).await;
    assert_eq!(
        unread_of_all(&log.pool, chat).await,
        [Some(1), Some(1), Some(4)]
    );

    // Bob had not read 3 and Carol had not; Alice wrote it.
    log.chat(chat, deleted(3, ALICE)).await;
    assert_eq!(
        unread_of_all(&log.pool, chat).await,
        [Some(1), Some(0), Some(3)]
    );

    // Bob had already read 1, so only Carol's count falls.
    log.chat(chat, deleted(1, ALICE)).await;
    assert_eq!(
        unread_of_all(&log.pool, chat).await,
        [Some(1), Some(0), Some(2)]
    );

    // Reading past deleted messages counts only what is still there.
    log.chat(chat, read(CAROL, 2)).await;
    log.chat(chat, read(ALICE, 4)).await;
    assert_eq!(
        unread_of_all(&log.pool, chat).await,
        [Some(0), Some(0), Some(1)]
    );
}

#[tokio::test]
async fn last_message_falls_back_to_the_newest_remaining_message_when_the_newest_is_deleted() {
    let mut log = Log::new().await;
    let chat = Uuid::new_v4();
    log.chat(chat, created(chat, &[ALICE, BOB])).await;
    assert_eq!(
        chats::get(&log.pool, chat)
            .await
            .unwrap()
            .unwrap()
            .last_message,
        None
    );

    log.chat(chat, sent(1, ALICE, "first")).await;
    log.chat(chat, sent(2, BOB, "second")).await;
    let details = chats::get(&log.pool, chat).await.unwrap().unwrap();
    assert_eq!(
        details.last_message,
        Some(json!({
            "id": message_id(2).to_string(),
            "seq": 2,
            "author": user(BOB).to_string(),
            "body": "second",
            "sent_at": "2025-11-21T04:40:12.123456Z",
        }))
    );

    log.chat(chat, deleted(2, BOB)).await;
    let preview = chats::get(&log.pool, chat)
        .await
        .unwrap()
        .unwrap()
        .last_message
        .unwrap();
    assert_eq!(preview["seq"], 1);
    assert_eq!(preview["body"], "first");

    log.chat(
        chat,
        ChatEvent::MessageEdited {
            message_id: message_id(1),
            seq: 1,
            body: MessageBody::parse("first, corrected").unwrap(),
            edited_by: user(ALICE),
            edited_at: at(200),
        },
    )
    .await;
    let listed = chats::list_for_user(&log.pool, user(BOB)).await.unwrap();
    assert_eq!(
        listed[0].last_message.as_ref().unwrap()["body"],
        "first, corrected"
    );

    log.chat(chat, deleted(1, ALICE)).await;
    assert_eq!(
        chats::get(&log.pool, chat)
            .await
            .unwrap()
            .unwrap()
            .last_message,
        None
    );
}

#[tokio::test]
async fn message_pages_run_newest_first_and_continue_before_the_last_seq() {
    let mut log = Log::new().await;
    let chat = Uuid::new_v4();
    log.chat(chat, created(chat, &[ALICE, BOB])).await;
    for seq in 1..=5 {
        log.chat(chat, sent(seq, ALICE, &format!("message {seq}")))
            .await;
    }
    log.chat(chat, deleted(4, ALICE)).await;

    let page = |before| {
        let pool = log.pool.clone();
        async move {
            let (access, rows) = chats::messages(&pool, chat, user(ALICE), before, 2)
                .await
                .unwrap()
                .unwrap();
            assert!(access.member);
            rows
        }
    };
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let rows = page(before).await;
        let Some(last) = rows.last() else { break };
        before = Some(last.seq);
        pages.push(rows.iter().map(|m| m.seq).collect::<Vec<_>>());
    }
    assert_eq!(pages, vec![vec![5, 4], vec![3, 2], vec![1]]);

    let newest = page(None).await;
    assert_eq!(newest[0].body.as_deref(), Some("message 5"));
    assert_eq!(newest[0].id, message_id(5));
    assert_eq!(newest[0].sent_at, at(15).trunc_subsecs_micros());
    assert!(!newest[0].deleted);
    assert!(newest[1].deleted, "a deleted message keeps its place");
    assert_eq!(newest[1].body, None, "but not its text");

    let (outsider, _) = chats::messages(&log.pool, chat, user(CAROL), None, 2)
        .await
        .unwrap()
        .unwrap();
    assert!(!outsider.member, "the page says who may read it");
    let other_chat = chats::messages(&log.pool, Uuid::new_v4(), user(ALICE), None, 10)
        .await
        .unwrap();
    assert!(other_chat.is_none());
}

/// Postgres keeps microseconds.
trait Micros {
    fn trunc_subsecs_micros(self) -> Self;
}

impl Micros for DateTime<Utc> {
    fn trunc_subsecs_micros(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}

#[tokio::test]
async fn a_removed_member_no_longer_lists_the_chat_and_a_returning_one_starts_with_all_unread() {
    let mut log = Log::new().await;
    let chat = Uuid::new_v4();
    log.chat(chat, created(chat, &[ALICE, BOB])).await;
    log.chat(chat, sent(1, ALICE, "hello")).await;
    log.chat(chat, sent(2, BOB, "hi")).await;
    log.chat(chat, read(BOB, 2)).await;
    log.chat(
        chat,
        ChatEvent::MemberRemoved {
            user_id: user(BOB),
            removed_by: user(BOB),
            at: at(50),
        },
    )
    .await;

    assert!(chats::list_for_user(&log.pool, user(BOB))
        .await
        .unwrap()
        .is_empty());
    assert!(!member(&log.pool, chat, BOB).await);
    assert!(member(&log.pool, chat, ALICE).await);
    let details = chats::get(&log.pool, chat).await.unwrap().unwrap();
    assert_eq!(details.members, vec![user(ALICE)]);

    log.chat(chat, sent(3, ALICE, "are you there?")).await;
    log.chat(
        chat,
        ChatEvent::MemberAdded {
            user_id: user(BOB),
            added_by: user(ALICE),
            at: at(60),
        },
    )
    .await;
    // Leaving dropped Bob's read marker, so both of Alice's messages are
    // unread again; his own is not.
    assert_eq!(unread(&log.pool, chat, BOB).await, Some(2));
    assert!(member(&log.pool, chat, BOB).await);
}

#[tokio::test]
async fn the_chat_list_puts_the_most_recently_active_chat_first_with_members_in_joining_order() {
    let mut log = Log::new().await;
    let (older, newer) = (Uuid::new_v4(), Uuid::new_v4());
    log.chat(older, created(older, &[CAROL, ALICE, BOB])).await;
    log.chat(newer, created(newer, &[ALICE, DAN])).await;
    log.chat(
        newer,
        ChatEvent::MemberAdded {
            user_id: user(BOB),
            added_by: user(ALICE),
            at: at(20),
        },
    )
    .await;

    let listed = chats::list_for_user(&log.pool, user(ALICE)).await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        [newer, older]
    );
    assert_eq!(listed[0].members, [user(ALICE), user(DAN), user(BOB)]);
    assert_eq!(listed[1].members, [user(CAROL), user(ALICE), user(BOB)]);
    assert_eq!(listed[1].kind, "group");
    assert_eq!(listed[1].title.as_deref(), Some("Ward 7"));

    log.chat(older, sent(1, CAROL, "news")).await;
    let listed = chats::list_for_user(&log.pool, user(ALICE)).await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        [older, newer]
    );
    assert!(chats::list_for_user(&log.pool, user(99))
        .await
        .unwrap()
        .is_empty());
}

const PATIENT_1: u128 = 11;
const PATIENT_2: u128 = 12;
const DOCTOR_1: u128 = 21;
const DOCTOR_2: u128 = 22;

fn requested(booking_id: Uuid, patient: u128, amount_minor: i64, currency: &str) -> BookingEvent {
    BookingEvent::BookingRequested {
        booking_id,
        patient_id: user(patient),
        call_type: CallType::Urgent,
        address: Address::parse("Tverskaya 1").unwrap(),
        price: Money::new(amount_minor, Currency::parse(currency).unwrap()).unwrap(),
        scheduled_at: None,
        requested_at: at(5),
    }
}

fn assigned(doctor: u128) -> BookingEvent {
    BookingEvent::DoctorAssigned {
        doctor_id: user(doctor),
        assigned_by: user(doctor),
        at: at(6),
    }
}

fn cancelled() -> BookingEvent {
    BookingEvent::BookingCancelled {
        reason: Reason::parse("feeling better").unwrap(),
        cancelled_by: user(PATIENT_1),
        at: at(7),
    }
}

fn ids(rows: &[bookings::BookingRow]) -> Vec<Uuid> {
    rows.iter().map(|row| row.id).collect()
}

#[tokio::test]
async fn bookings_filter_by_patient_doctor_and_status_newest_first() {
    let mut log = Log::new().await;
    let b: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    log.booking(b[0], requested(b[0], PATIENT_1, 150_000, "RUB"))
        .await;
    log.booking(b[1], requested(b[1], PATIENT_2, 90_000, "RUB"))
        .await;
    log.booking(b[2], requested(b[2], PATIENT_1, 70_000, "RUB"))
        .await;
    log.booking(b[3], requested(b[3], PATIENT_2, 50_000, "RUB"))
        .await;
    log.booking(b[0], assigned(DOCTOR_1)).await;
    log.booking(b[1], assigned(DOCTOR_1)).await;
    log.booking(b[3], assigned(DOCTOR_2)).await;
    log.booking(b[0], cancelled()).await;

    let list = |filter| {
        let pool = log.pool.clone();
        async move { ids(&bookings::list(&pool, filter, None, 50).await.unwrap().1) }
    };
    assert_eq!(
        list(BookingFilter::default()).await,
        [b[3], b[2], b[1], b[0]]
    );
    let of_patient_1 = BookingFilter {
        patient_id: Some(user(PATIENT_1)),
        ..BookingFilter::default()
    };
    assert_eq!(list(of_patient_1).await, [b[2], b[0]]);
    let of_doctor_1 = BookingFilter {
        doctor_id: Some(user(DOCTOR_1)),
        ..BookingFilter::default()
    };
    assert_eq!(list(of_doctor_1).await, [b[1], b[0]]);
    let assigned_to_doctor_1 = BookingFilter {
        status: Some(BookingStatus::Assigned),
        ..of_doctor_1
    };
    assert_eq!(list(assigned_to_doctor_1).await, [b[1]]);
    let pending = BookingFilter {
        status: Some(BookingStatus::Pending),
        ..BookingFilter::default()
    };
    assert_eq!(list(pending).await, [b[2]]);

    let cancelled = bookings::get(&log.pool, b[0]).await.unwrap().unwrap();
    assert_eq!(cancelled.status, "cancelled");
    assert_eq!(cancelled.cancel_reason.as_deref(), Some("feeling better"));
    assert_eq!(cancelled.doctor_id, Some(user(DOCTOR_1)));
    assert_eq!(cancelled.patient_id, user(PATIENT_1));
    assert_eq!(cancelled.call_type, "urgent");
    assert_eq!(cancelled.address, "Tverskaya 1");
    assert_eq!(
        (cancelled.amount_minor, cancelled.currency.as_str()),
        (150_000, "RUB")
    );
    assert_eq!(cancelled.updated_at, at(1_008).trunc_subsecs_micros());
    assert!(bookings::get(&log.pool, Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn booking_pages_continue_after_the_cursor_without_repeats_or_gaps() {
    let mut log = Log::new().await;
    let mut requested_order = Vec::new();
    for n in 0..7 {
        let id = Uuid::new_v4();
        let patient = if n % 2 == 0 { PATIENT_1 } else { PATIENT_2 };
        log.booking(id, requested(id, patient, 10_000, "RUB")).await;
        requested_order.push(id);
    }
    let filter = BookingFilter::default();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (_, page) = bookings::list(&log.pool, filter, cursor, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = page.last().map(|row| row.created_position);
        seen.extend(ids(&page));
    }
    requested_order.reverse();
    assert_eq!(seen, requested_order);

    let filter = BookingFilter {
        patient_id: Some(user(PATIENT_1)),
        ..BookingFilter::default()
    };
    let (_, first) = bookings::list(&log.pool, filter, None, 2).await.unwrap();
    let (_, rest) = bookings::list(&log.pool, filter, Some(first[1].created_position), 10)
        .await
        .unwrap();
    assert_eq!(ids(&first), [requested_order[0], requested_order[2]]);
    assert_eq!(ids(&rest), [requested_order[4], requested_order[6]]);
}

fn initiated(
    payment_id: Uuid,
    booking_id: Uuid,
    amount_minor: i64,
    currency: &str,
) -> PaymentEvent {
    PaymentEvent::PaymentInitiated {
        payment_id,
        booking_id,
        patient_id: user(PATIENT_1),
        method: PaymentMethod::Card,
        amount: Money::new(amount_minor, Currency::parse(currency).unwrap()).unwrap(),
        initiated_at: at(30),
        provider_payment_id: None,
        confirmation_url: None,
    }
}

/// A payment initiated with the charge its provider opened.
fn initiated_with_charge(
    payment_id: Uuid,
    booking_id: Uuid,
    reference: &str,
    page: &str,
) -> PaymentEvent {
    let PaymentEvent::PaymentInitiated {
        payment_id,
        booking_id,
        patient_id,
        method,
        amount,
        initiated_at,
        ..
    } = initiated(payment_id, booking_id, 150_000, "RUB")
    else {
        unreachable!()
    };
    PaymentEvent::PaymentInitiated {
        payment_id,
        booking_id,
        patient_id,
        method,
        amount,
        initiated_at,
        provider_payment_id: Some(reference.to_owned()),
        confirmation_url: Some(page.to_owned()),
    }
}

fn succeeded(reference: &str) -> PaymentEvent {
    PaymentEvent::PaymentSucceeded {
        provider_payment_id: reference.to_owned(),
        at: at(31),
    }
}

fn failed(reference: &str) -> PaymentEvent {
    PaymentEvent::PaymentFailed {
        provider_payment_id: reference.to_owned(),
        at: at(31),
    }
}

fn refund_requested() -> PaymentEvent {
    PaymentEvent::RefundRequested {
        reason: Reason::parse("visit cancelled").unwrap(),
        requested_by: user(99),
        at: at(40),
    }
}

fn refunded() -> PaymentEvent {
    PaymentEvent::PaymentRefunded {
        provider_refund_id: "refund-1".to_owned(),
        at: at(41),
    }
}

fn paid(payment_id: Uuid) -> BookingEvent {
    BookingEvent::BookingPaid {
        payment_id,
        at: at(32),
    }
}

async fn payment_state(pool: &PgPool, booking_id: Uuid) -> (bool, Option<Uuid>, Option<String>) {
    let row = bookings::get(pool, booking_id).await.unwrap().unwrap();
    (row.paid, row.payment_id, row.payment_status)
}

#[tokio::test]
async fn a_booking_shows_its_latest_payment_status_and_stays_paid_once_a_payment_succeeds() {
    let mut log = Log::new().await;
    let booking = Uuid::new_v4();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    log.booking(booking, requested(booking, PATIENT_1, 150_000, "RUB"))
        .await;
    assert_eq!(payment_state(&log.pool, booking).await, (false, None, None));

    log.payment(first, initiated(first, booking, 150_000, "RUB"))
        .await;
    assert_eq!(
        payment_state(&log.pool, booking).await,
        (false, Some(first), Some("pending".to_owned()))
    );
    log.payment(first, failed("prov-1")).await;
    assert_eq!(
        payment_state(&log.pool, booking).await,
        (false, Some(first), Some("failed".to_owned()))
    );

    log.payment(second, initiated(second, booking, 150_000, "RUB"))
        .await;
    log.payment(second, succeeded("prov-2")).await;
    assert_eq!(
        payment_state(&log.pool, booking).await,
        (false, Some(second), Some("succeeded".to_owned()))
    );
    log.booking(booking, paid(second)).await;
    assert_eq!(
        payment_state(&log.pool, booking).await,
        (true, Some(second), Some("succeeded".to_owned()))
    );

    // A late event of the failed attempt does not hide the paying one.
    log.payment(first, failed("prov-1")).await;
    log.payment(second, refund_requested()).await;
    assert_eq!(
        payment_state(&log.pool, booking).await,
        (true, Some(second), Some("refund_pending".to_owned()))
    );
    log.payment(second, refunded()).await;
    assert_eq!(
        payment_state(&log.pool, booking).await,
        (true, Some(second), Some("refunded".to_owned()))
    );
}

#[tokio::test]
async fn payments_of_a_booking_are_listed_newest_first_with_their_provider_reference() {
    let mut log = Log::new().await;
    let (booking, other_booking) = (Uuid::new_v4(), Uuid::new_v4());
    let (first, second, unrelated) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    log.booking(booking, requested(booking, PATIENT_1, 150_000, "RUB"))
        .await;
    log.payment(
        first,
        initiated_with_charge(first, booking, "prov-1", "https://pay.example/confirm/1"),
    )
    .await;
    let opened = payments::get(&log.pool, first).await.unwrap().unwrap();
    assert_eq!(opened.status, "pending");
    assert_eq!(opened.provider_payment_id.as_deref(), Some("prov-1"));
    log.payment(first, failed("prov-1")).await;
    log.payment(second, initiated(second, booking, 150_000, "RUB"))
        .await;
    log.payment(second, succeeded("prov-2")).await;
    log.payment(unrelated, initiated(unrelated, other_booking, 1_000, "RUB"))
        .await;

    let listed = payments::for_booking(&log.pool, booking).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.id).collect::<Vec<_>>(),
        [second, first]
    );
    let failed = &listed[1];
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.provider_payment_id.as_deref(), Some("prov-1"));
    assert_eq!(
        failed.confirmation_url.as_deref(),
        Some("https://pay.example/confirm/1")
    );
    assert_eq!(failed.booking_id, booking);
    assert_eq!(failed.patient_id, user(PATIENT_1));
    assert_eq!(failed.method, "card");
    assert_eq!(
        (failed.amount_minor, failed.currency.as_str()),
        (150_000, "RUB")
    );

    log.payment(second, refund_requested()).await;
    log.payment(second, refunded()).await;
    let refunded = payments::get(&log.pool, second).await.unwrap().unwrap();
    assert_eq!(refunded.status, "refunded");
    assert_eq!(refunded.provider_payment_id.as_deref(), Some("prov-2"));
    assert_eq!(refunded.confirmation_url, None);
    assert_eq!(refunded.updated_at, at(1_008).trunc_subsecs_micros());

    assert!(payments::get(&log.pool, Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
    assert!(payments::for_booking(&log.pool, Uuid::new_v4())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_summary_counts_every_status_and_nets_refunds_out_of_revenue_per_currency() {
    let mut log = Log::new().await;
    let empty = summary::get(&mut log.pool.acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(empty.bookings_by_status.values().sum::<i64>(), 0);
    assert_eq!(
        empty.bookings_by_status.keys().collect::<Vec<_>>(),
        ["assigned", "cancelled", "completed", "pending"]
    );
    assert_eq!(
        empty.payments_by_status.keys().collect::<Vec<_>>(),
        [
            "failed",
            "pending",
            "refund_pending",
            "refunded",
            "succeeded"
        ]
    );
    assert!(empty.revenue.is_empty());

    let b: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let p: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    log.booking(b[0], requested(b[0], PATIENT_1, 150_000, "RUB"))
        .await;
    log.booking(b[1], requested(b[1], PATIENT_1, 90_000, "RUB"))
        .await;
    log.booking(b[2], requested(b[2], PATIENT_2, 5_000, "USD"))
        .await;
    log.booking(b[3], requested(b[3], PATIENT_2, 1_000, "RUB"))
        .await;
    log.booking(b[0], assigned(DOCTOR_1)).await;
    log.booking(b[0], paid(p[0])).await;
    log.booking(
        b[0],
        BookingEvent::BookingCompleted {
            doctor_id: user(DOCTOR_1),
            at: at(9),
        },
    )
    .await;
    log.booking(b[1], assigned(DOCTOR_2)).await;

    log.payment(p[0], initiated(p[0], b[0], 150_000, "RUB"))
        .await;
    log.payment(p[0], succeeded("a")).await;
    log.payment(p[1], initiated(p[1], b[1], 90_000, "RUB"))
        .await;
    log.payment(p[1], succeeded("b")).await;
    log.payment(p[1], refund_requested()).await;
    log.payment(p[1], refunded()).await;
    log.payment(p[2], initiated(p[2], b[2], 5_000, "USD")).await;
    log.payment(p[2], succeeded("c")).await;
    log.payment(p[3], initiated(p[3], b[3], 1_000, "RUB")).await;
    log.payment(p[3], failed("d")).await;
    log.payment(p[4], initiated(p[4], b[3], 1_000, "RUB")).await;
    log.booking(b[3], cancelled()).await;
    // A repeated notification changes nothing.
    log.payment(p[0], succeeded("a")).await;

    let figures = summary::get(&mut log.pool.acquire().await.unwrap())
        .await
        .unwrap();
    let counts = |map: &std::collections::BTreeMap<String, i64>| {
        map.iter()
            .map(|(status, count)| (status.clone(), *count))
            .collect::<Vec<_>>()
    };
    let pairs = |list: &[(&str, i64)]| {
        list.iter()
            .map(|(status, count)| ((*status).to_owned(), *count))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts(&figures.bookings_by_status),
        pairs(&[
            ("assigned", 1),
            ("cancelled", 1),
            ("completed", 1),
            ("pending", 1)
        ])
    );
    assert_eq!(
        counts(&figures.payments_by_status),
        pairs(&[
            ("failed", 1),
            ("pending", 1),
            ("refund_pending", 0),
            ("refunded", 1),
            ("succeeded", 2)
        ])
    );
    assert_eq!(
        figures.revenue,
        [
            summary::Revenue {
                currency: "RUB".to_owned(),
                amount_minor: 150_000,
            },
            summary::Revenue {
                currency: "USD".to_owned(),
                amount_minor: 5_000,
            },
        ]
    );
    assert_eq!(
        serde_json::to_value(&figures).unwrap()["revenue"][0],
        json!({"currency": "RUB", "amount_minor": 150_000})
    );
}

/// Every read-model table, each as one JSON array in a fixed order.
async fn dump(pool: &PgPool) -> Vec<Value> {
    let tables = [
        ("rm_chats", "chat_id"),
        ("rm_chat_members", "chat_id, user_id"),
        ("rm_chat_messages", "chat_id, seq"),
        ("rm_bookings", "booking_id"),
        ("rm_booking_payments", "payment_id"),
        ("rm_payments", "payment_id"),
        ("rm_summary_counts", "kind, status"),
        ("rm_summary_revenue", "currency"),
        ("rm_summary_bookings", "booking_id"),
        ("rm_summary_payments", "payment_id"),
    ];
    let mut dumped = Vec::new();
    for (table, key) in tables {
        let rows: Value = sqlx::query_scalar(&format!(
            "SELECT COALESCE(jsonb_agg(to_jsonb(t) ORDER BY {key}), '[]') FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        dumped.push(json!({ table: rows }));
    }
    dumped
}

#[tokio::test]
async fn rebuilding_from_the_log_in_one_batch_gives_the_same_rows_as_applying_live() {
    let mut log = Log::new().await;
    let chat = Uuid::new_v4();
    log.chat(chat, created(chat, &[ALICE, BOB, CAROL])).await;
    log.chat(chat, sent(1, ALICE, "one")).await;
    log.chat(chat, sent(2, BOB, "two")).await;
    log.chat(chat, read(CAROL, 1)).await;
    log.chat(chat, deleted(2, BOB)).await;
    let (booking, payment) = (Uuid::new_v4(), Uuid::new_v4());
    log.booking(booking, requested(booking, PATIENT_1, 150_000, "RUB"))
        .await;
    log.payment(payment, initiated(payment, booking, 150_000, "RUB"))
        .await;
    log.payment(payment, succeeded("prov")).await;
    log.booking(booking, paid(payment)).await;
    log.booking(booking, cancelled()).await;
    log.payment(payment, refund_requested()).await;
    // A run of new bookings, one of them taken by a doctor at once.
    let (second, third) = (Uuid::new_v4(), Uuid::new_v4());
    log.booking(second, requested(second, PATIENT_2, 5_000, "USD"))
        .await;
    log.booking(third, requested(third, PATIENT_1, 7_000, "EUR"))
        .await;
    log.booking(second, assigned(DOCTOR_1)).await;

    let (rebuilt, _leftovers) = fresh_pool().await;
    apply_all(&rebuilt, &log.entries).await;
    let live = dump(&log.pool).await;
    assert!(live.iter().all(|table| table
        .as_object()
        .unwrap()
        .values()
        .all(|rows| rows.as_array().is_some_and(|rows| !rows.is_empty()))));
    assert_eq!(dump(&rebuilt).await, live);
}

/// A message of the second chat in a test, with ids apart from [`sent`]'s.
fn sent_elsewhere(seq: u64, author: u128, body: &str) -> ChatEvent {
    ChatEvent::MessageSent {
        message_id: Uuid::from_u128(2_000 + u128::from(seq)),
        seq,
        author: user(author),
        body: Some(MessageBody::parse(body).unwrap()),
        attachments: vec![],
        sent_at: at(20 + i64::try_from(seq).unwrap()),
    }
}

#[tokio::test]
async fn messages_applied_as_one_batch_across_chats_give_the_same_rows_as_one_at_a_time() {
    let mut log = Log::new().await;
    let (ward, direct) = (Uuid::new_v4(), Uuid::new_v4());
    log.chat(ward, created(ward, &[ALICE, BOB, CAROL])).await;
    log.chat(direct, created(direct, &[BOB, DAN])).await;
    log.chat(ward, sent(1, ALICE, "one")).await;
    log.chat(direct, sent_elsewhere(1, BOB, "hello")).await;
    log.chat(ward, sent(2, BOB, "two")).await;
    log.chat(ward, sent(3, ALICE, "three")).await;
    log.chat(direct, sent_elsewhere(2, DAN, "hi")).await;
    log.chat(ward, read(CAROL, 2)).await;
    log.chat(ward, sent(4, CAROL, "four")).await;
    log.chat(direct, sent_elsewhere(3, BOB, "how are you?"))
        .await;
    log.chat(
        ward,
        ChatEvent::MemberAdded {
            user_id: user(DAN),
            added_by: user(ALICE),
            at: at(60),
        },
    )
    .await;
    log.chat(ward, sent(5, DAN, "five")).await;
    log.chat(ward, sent(6, BOB, "six")).await;
    log.chat(ward, deleted(6, BOB)).await;
    log.chat(direct, sent_elsewhere(4, DAN, "fine")).await;

    let (batched, _leftovers) = fresh_pool().await;
    apply_all(&batched, &log.entries).await;
    assert_eq!(
        unread_of_all(&batched, ward).await,
        [Some(3), Some(4), Some(2)]
    );
    assert_eq!(unread(&batched, direct, BOB).await, Some(2));
    assert_eq!(dump(&batched).await, dump(&log.pool).await);
}

#[tokio::test]
async fn an_event_whose_row_the_read_model_already_holds_fails_instead_of_being_skipped() {
    let (pool, _leftovers) = fresh_pool().await;
    let (ward, direct) = (Uuid::new_v4(), Uuid::new_v4());
    let (booking, payment) = (Uuid::new_v4(), Uuid::new_v4());
    let held = [
        entry(1, "Chat", ward, 1, &created(ward, &[ALICE, BOB]), json!({})),
        entry(
            2,
            "Chat",
            direct,
            1,
            &created(direct, &[ALICE, CAROL]),
            json!({}),
        ),
        entry(3, "Chat", ward, 2, &sent(1, ALICE, "one"), json!({})),
        entry(
            4,
            "Booking",
            booking,
            1,
            &requested(booking, PATIENT_1, 150_000, "RUB"),
            json!({}),
        ),
        entry(
            5,
            "Payment",
            payment,
            1,
            &initiated(payment, booking, 150_000, "RUB"),
            json!({}),
        ),
    ];
    apply_all(&pool, &held).await;

    let added_again = ChatEvent::MemberAdded {
        user_id: user(BOB),
        added_by: user(ALICE),
        at: at(60),
    };
    // Each names a row that is already there: a message id another chat
    // holds (a log written before ids were unique), or a chat, member,
    // booking or payment that exists.
    let clashes = [
        (
            entry(6, "Chat", direct, 2, &sent(1, CAROL, "same id"), json!({})),
            &[Projection::Chats][..],
        ),
        (
            entry(7, "Chat", ward, 3, &created(ward, &[ALICE]), json!({})),
            &[Projection::Chats],
        ),
        (
            entry(8, "Chat", ward, 3, &added_again, json!({})),
            &[Projection::Chats],
        ),
        (
            entry(
                9,
                "Booking",
                booking,
                2,
                &requested(booking, PATIENT_1, 150_000, "RUB"),
                json!({}),
            ),
            &[Projection::Bookings, Projection::Summary],
        ),
        (
            entry(
                10,
                "Payment",
                payment,
                2,
                &initiated(payment, booking, 150_000, "RUB"),
                json!({}),
            ),
            &[
                Projection::Bookings,
                Projection::Payments,
                Projection::Summary,
            ],
        ),
    ];
    for (clash, followers) in clashes {
        for projection in followers {
            let mut tx = pool.begin().await.unwrap();
            let err = projection.apply(&mut tx, &clash).await.unwrap_err();
            assert!(
                matches!(&err, ApplyError::Sql(sqlx::Error::Database(db)) if db.is_unique_violation()),
                "{projection} at {}: {err}",
                clash.position
            );
        }
    }
}

#[tokio::test]
async fn a_payload_that_is_not_its_event_is_a_permanent_decode_error() {
    let (pool, _leftovers) = fresh_pool().await;
    let mut bad = entry(
        1,
        "Chat",
        Uuid::new_v4(),
        1,
        &json!({"MessageSent": {"seq": "not a number"}}),
        json!({}),
    );
    let mut conn = pool.acquire().await.unwrap();
    let err = Projection::Chats.apply(&mut conn, &bad).await.unwrap_err();
    assert!(matches!(err, ApplyError::Decode { position: 1, .. }));

    // Other projections do not follow chats, so the entry is nothing to them.
    for projection in [
        Projection::Bookings,
        Projection::Payments,
        Projection::Summary,
    ] {
        projection.apply(&mut conn, &bad).await.unwrap();
    }

    bad.aggregate_type = "Booking".to_owned();
    bad.aggregate_id = "not-a-uuid".to_owned();
    let err = Projection::Bookings
        .apply(&mut conn, &bad)
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::Decode { .. }));
}
