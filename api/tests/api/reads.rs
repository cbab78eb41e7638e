//! Reads from the projections: who sees what, paging, validation, and
//! read-your-writes through the `consistency` token of each command.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::{ConsistencyToken, Metadata};
use common::{admin, auditor, delete, doctor, patch, patient, post, Call, Reply, TestApp};
use domain::booking::{Booking, BookingCommand};
use domain::payment::{Payment, PaymentCommand};
use domain::values::{Actor, Currency, Money};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// What `visit()` charges.
const PRICE: i64 = 150_000;

fn group(members: &[Actor]) -> Call {
    let members: Vec<Uuid> = members.iter().map(|a| a.user_id).collect();
    post(
        "/api/v1/chats",
        json!({ "kind": "group", "title": "Care team", "members": members }),
    )
}

fn send(chat: Uuid, body: &str) -> Call {
    post(
        format!("/api/v1/chats/{chat}/messages"),
        json!({ "body": body }),
    )
}

fn mark_read(chat: Uuid, up_to_seq: u64) -> Call {
    post(
        format!("/api/v1/chats/{chat}/read"),
        json!({ "up_to_seq": up_to_seq }),
    )
}

fn visit() -> Call {
    post(
        "/api/v1/bookings",
        json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": PRICE }),
    )
}

fn assign(booking: Uuid, doctor: Actor) -> Call {
    post(
        format!("/api/v1/bookings/{booking}/assign"),
        json!({ "doctor_id": doctor.user_id }),
    )
}

fn pay(booking: Uuid) -> Call {
    post(
        "/api/v1/payments",
        json!({ "booking_id": booking, "method": "card" }),
    )
}

/// An accepted command's answer.
struct Done {
    id: Uuid,
    token: String,
}

/// All of Herald, remembering the token of the latest command so every read
/// sees everything written before it.
struct Herald {
    app: TestApp,
    last: Mutex<String>,
}

impl Herald {
    async fn start() -> Self {
        Self {
            app: TestApp::spawn_with_pipeline().await,
            last: Mutex::new(String::new()),
        }
    }

    /// Sends `call` as `actor`; it must be accepted.
    async fn run(&self, actor: Actor, call: Call) -> Done {
        let reply = self.app.call(actor, &call).await;
        assert!(
            reply.status.is_success(),
            "{} {}: {}",
            call.method,
            call.path,
            reply.body
        );
        let token = reply.body["consistency"].as_str().unwrap().to_owned();
        token.clone_into(&mut self.last.lock().unwrap());
        Done {
            id: reply.id(),
            token,
        }
    }

    /// A group chat `creator` opens with `members`, each enrolled first.
    async fn chat(&self, creator: Actor, members: &[Actor]) -> Done {
        for member in members {
            self.app.enroll(*member).await;
        }
        self.run(creator, group(members)).await
    }

    /// `by` assigns `booking` to `doctor`, who is enrolled first.
    async fn assign(&self, by: Actor, booking: Uuid, doctor: Actor) -> Done {
        let doctor = self.app.enroll(doctor).await;
        self.run(by, assign(booking, doctor)).await
    }

    /// `GET path` as `actor`, waiting for the latest command.
    async fn get(&self, actor: Actor, path: &str) -> Reply {
        let token = self.last.lock().unwrap().clone();
        read(&self.app, actor, path, &token).await
    }

    /// `GET path` as `actor` holding the copy tagged `etag`, waiting for the
    /// latest command.
    async fn get_holding(&self, actor: Actor, path: &str, etag: &str) -> Reply {
        let token = self.last.lock().unwrap().clone();
        let separator = if path.contains('?') { '&' } else { '?' };
        let request = self
            .app
            .request(
                Method::GET,
                &format!("{path}{separator}consistency={token}"),
            )
            .bearer_auth(self.app.token(actor))
            .header("if-none-match", etag);
        Reply::send(request).await
    }

    /// The `ETag` of `GET path` as `actor`, which must answer 200.
    async fn etag(&self, actor: Actor, path: &str) -> String {
        let reply = self.get(actor, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        reply.headers["etag"].to_str().unwrap().to_owned()
    }

    /// `GET path` as `actor`; it must answer 200.
    async fn ok(&self, actor: Actor, path: &str) -> Value {
        let reply = self.get(actor, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        reply.body
    }

    /// `GET path` as `actor`; it must answer a problem of `status`.
    async fn refused(&self, actor: Actor, path: &str, status: StatusCode) -> Reply {
        let reply = self.get(actor, path).await;
        reply.assert_problem(status);
        reply
    }

    /// The `items` of `GET path` as `actor`.
    async fn items(&self, actor: Actor, path: &str) -> Vec<Value> {
        self.ok(actor, path).await["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The ids of `items`, in order.
    async fn ids(&self, actor: Actor, path: &str) -> Vec<Uuid> {
        ids(&self.items(actor, path).await)
    }

    /// A booking `patient` requested, and its id.
    async fn booking(&self, patient: Actor) -> Uuid {
        self.run(patient, visit()).await.id
    }

    /// Confirms a payment and the booking it paid, as the provider's
    /// notification does.
    async fn succeed(&self, payment: Uuid, booking: Uuid) {
        let metadata = Metadata::for_request(Actor::system(), "provider-notification");
        let confirmed = PaymentCommand::MarkSucceeded {
            provider_payment_id: self.app.provider_charge(payment).await,
            amount: Money::new(PRICE, Currency::rub()).unwrap(),
            at: Utc::now(),
        };
        let write = &self.app.write;
        write
            .execute::<Payment>(payment, confirmed, &metadata)
            .await
            .unwrap();
        let paid = BookingCommand::MarkPaid {
            payment_id: payment,
            at: Utc::now(),
        };
        let committed = write
            .execute::<Booking>(booking, paid, &metadata)
            .await
            .unwrap();
        *self.last.lock().unwrap() = committed.token().encode();
    }
}

/// `GET path` as `actor` with `?consistency=token`.
async fn read(app: &TestApp, actor: Actor, path: &str, token: &str) -> Reply {
    let separator = if path.contains('?') { '&' } else { '?' };
    let request = app
        .request(
            Method::GET,
            &format!("{path}{separator}consistency={token}"),
        )
        .bearer_auth(app.token(actor));
    Reply::send(request).await
}

fn ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|item| item["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn seqs(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_chat_list_shows_only_the_callers_chats_with_last_message_and_unread_count() {
    let h = Herald::start().await;
    let (alice, bob, carol) = (patient(), doctor(), patient());
    let chat = h.chat(alice, &[bob]).await.id;
    let elsewhere = h.chat(carol, &[patient()]).await.id;

    let listed = h.items(alice, "/api/v1/chats").await;
    assert_eq!(ids(&listed), [chat]);
    assert_eq!(listed[0]["kind"], "group");
    assert_eq!(listed[0]["title"], "Care team");
    assert_eq!(listed[0]["members"], json!([alice.user_id, bob.user_id]));
    assert_eq!(listed[0]["last_message"], Value::Null);
    assert_eq!(listed[0]["unread_count"], 0);
    assert_eq!(h.ids(carol, "/api/v1/chats").await, [elsewhere]);

    h.run(bob, send(chat, "one")).await;
    let two = h.run(bob, send(chat, "two")).await.id;
    let listed = h.items(alice, "/api/v1/chats").await;
    assert_eq!(listed[0]["unread_count"], 2);
    assert_eq!(listed[0]["last_message"]["id"], two.to_string());
    assert_eq!(listed[0]["last_message"]["seq"], 2);
    assert_eq!(listed[0]["last_message"]["author"], bob.user_id.to_string());
    assert_eq!(listed[0]["last_message"]["body"], "two");
    assert_eq!(h.items(bob, "/api/v1/chats").await[0]["unread_count"], 0);

    h.run(alice, mark_read(chat, 1)).await;
    assert_eq!(h.items(alice, "/api/v1/chats").await[0]["unread_count"], 1);
    h.run(alice, mark_read(chat, 2)).await;
    assert_eq!(h.items(alice, "/api/v1/chats").await[0]["unread_count"], 0);

    h.run(alice, send(chat, "three")).await;
    assert_eq!(h.items(bob, "/api/v1/chats").await[0]["unread_count"], 1);
    assert_eq!(h.items(alice, "/api/v1/chats").await[0]["unread_count"], 0);

    let leave = format!("/api/v1/chats/{chat}/members/{}", bob.user_id);
    h.run(bob, delete(leave)).await;
    assert!(h.items(bob, "/api/v1/chats").await.is_empty());
    let listed = h.items(alice, "/api/v1/chats").await;
    assert_eq!(listed[0]["members"], json!([alice.user_id]));
    h.refused(bob, &format!("/api/v1/chats/{chat}"), StatusCode::NOT_FOUND)
        .await;
    h.refused(
        bob,
        &format!("/api/v1/chats/{chat}/messages"),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_chat_and_its_messages_are_shown_to_members_and_admins_and_hidden_from_others() {
    let h = Herald::start().await;
    let (alice, bob, outsider) = (patient(), doctor(), patient());
    let chat = h.chat(alice, &[bob]).await.id;
    h.run(bob, send(chat, "hello")).await;
    let (path, messages) = (
        format!("/api/v1/chats/{chat}"),
        format!("/api/v1/chats/{chat}/messages"),
    );

    let shown = h.ok(alice, &path).await;
    assert_eq!(shown["id"], chat.to_string());
    assert_eq!(shown["kind"], "group");
    assert_eq!(shown["created_by"], alice.user_id.to_string());
    assert_eq!(shown["members"], json!([alice.user_id, bob.user_id]));
    assert_eq!(shown["last_message"]["body"], "hello");
    for reader in [bob, admin()] {
        assert_eq!(h.ok(reader, &path).await["id"], chat.to_string());
        assert_eq!(seqs(&h.ok(reader, &messages).await), [1]);
    }
    for reader in [outsider, doctor(), auditor()] {
        h.refused(reader, &path, StatusCode::NOT_FOUND).await;
        h.refused(reader, &messages, StatusCode::NOT_FOUND).await;
    }
    let unknown = Uuid::new_v4();
    for reader in [alice, admin()] {
        h.refused(
            reader,
            &format!("/api/v1/chats/{unknown}"),
            StatusCode::NOT_FOUND,
        )
        .await;
        h.refused(
            reader,
            &format!("/api/v1/chats/{unknown}/messages"),
            StatusCode::NOT_FOUND,
        )
        .await;
    }
}

#[tokio::test]
async fn messages_come_newest_first_in_keyset_pages() {
    let h = Herald::start().await;
    let (alice, bob) = (patient(), doctor());
    let chat = h.chat(alice, &[bob]).await.id;
    for n in 1..=5 {
        h.run(
            if n % 2 == 0 { bob } else { alice },
            send(chat, &format!("m{n}")),
        )
        .await;
    }
    let page = |query: &str| format!("/api/v1/chats/{chat}/messages?{query}");

    let all = h.ok(bob, &page("")).await;
    assert_eq!(seqs(&all), [5, 4, 3, 2, 1]);
    assert_eq!(all["items"][0]["body"], "m5");
    assert_eq!(all["items"][0]["author"], alice.user_id.to_string());
    assert_eq!(all["items"][0]["deleted"], false);
    assert_eq!(all["next_before_seq"], Value::Null);

    let first = h.ok(bob, &page("limit=2")).await;
    assert_eq!(seqs(&first), [5, 4]);
    assert_eq!(first["next_before_seq"], 4);
    let second = h.ok(bob, &page("limit=2&before_seq=4")).await;
    assert_eq!(seqs(&second), [3, 2]);
    assert_eq!(second["next_before_seq"], 2);
    let last = h.ok(bob, &page("limit=2&before_seq=2")).await;
    assert_eq!(seqs(&last), [1]);
    assert_eq!(last["next_before_seq"], Value::Null);

    let exact = h.ok(bob, &page("limit=2&before_seq=3")).await;
    assert_eq!(seqs(&exact), [2, 1]);
    assert_eq!(exact["next_before_seq"], Value::Null);
    assert_eq!(seqs(&h.ok(bob, &page("limit=200")).await).len(), 5);
    assert_eq!(seqs(&h.ok(bob, &page("limit=1")).await), [5]);
}

#[tokio::test]
async fn a_message_page_limit_outside_1_to_200_is_refused_naming_limit() {
    let h = Herald::start().await;
    let alice = patient();
    let chat = h.chat(alice, &[doctor()]).await.id;
    let page = |query: &str| format!("/api/v1/chats/{chat}/messages?{query}");

    for limit in ["0", "201", "-1", "ten"] {
        h.get(alice, &page(&format!("limit={limit}")))
            .await
            .assert_names("limit");
    }
    for before_seq in ["0", "x"] {
        h.get(alice, &page(&format!("before_seq={before_seq}")))
            .await
            .assert_names("before_seq");
    }
    let both = h.get(alice, &page("limit=0&before_seq=0")).await;
    both.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = both.invalid_fields();
    fields.sort();
    assert_eq!(fields, ["before_seq", "limit"]);
}

#[tokio::test]
async fn an_edited_message_shows_its_new_body_and_a_deleted_one_is_marked_deleted() {
    let h = Herald::start().await;
    let (alice, bob) = (patient(), doctor());
    let chat = h.chat(alice, &[bob]).await.id;
    let draft = h.run(alice, send(chat, "first draft")).await.id;
    let oops = h.run(alice, send(chat, "oops")).await.id;
    assert_eq!(h.items(bob, "/api/v1/chats").await[0]["unread_count"], 2);

    let edit = format!("/api/v1/chats/{chat}/messages/{draft}");
    h.run(alice, patch(edit, json!({ "body": "final" }))).await;
    h.run(
        alice,
        delete(format!("/api/v1/chats/{chat}/messages/{oops}")),
    )
    .await;

    let page = h.ok(bob, &format!("/api/v1/chats/{chat}/messages")).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(ids(items), [oops, draft]);
    assert_eq!(items[0]["deleted"], true);
    assert_eq!(items[0]["body"], Value::Null);
    assert_eq!(items[1]["deleted"], false);
    assert_eq!(items[1]["body"], "final");
    assert!(items[1]["edited_at"].is_string(), "{page}");
    let listed = h.items(bob, "/api/v1/chats").await;
    assert_eq!(listed[0]["unread_count"], 1);
    assert_eq!(listed[0]["last_message"]["id"], draft.to_string());
    assert_eq!(listed[0]["last_message"]["body"], "final");
}

#[tokio::test]
async fn bookings_are_listed_by_role_and_filtered_by_status() {
    let h = Herald::start().await;
    let (p1, p2, d1, d2, boss) = (patient(), patient(), doctor(), doctor(), admin());
    let b1 = h.booking(p1).await;
    let b2 = h.booking(p1).await;
    let b3 = h.booking(p2).await;
    h.assign(d1, b1, d1).await;
    h.assign(boss, b3, d1).await;
    h.run(
        d1,
        post(format!("/api/v1/bookings/{b3}/complete"), json!({})),
    )
    .await;

    assert_eq!(h.ids(p1, "/api/v1/bookings").await, [b2, b1]);
    assert_eq!(h.ids(p2, "/api/v1/bookings").await, [b3]);
    assert_eq!(h.ids(d1, "/api/v1/bookings").await, [b3, b1]);
    assert!(h.ids(d2, "/api/v1/bookings").await.is_empty());
    assert_eq!(h.ids(boss, "/api/v1/bookings").await, [b3, b2, b1]);
    h.refused(auditor(), "/api/v1/bookings", StatusCode::FORBIDDEN)
        .await;

    let with = |status: &str| format!("/api/v1/bookings?status={status}");
    assert_eq!(h.ids(boss, &with("pending")).await, [b2]);
    assert_eq!(h.ids(boss, &with("assigned")).await, [b1]);
    assert_eq!(h.ids(boss, &with("completed")).await, [b3]);
    assert!(h.ids(boss, &with("cancelled")).await.is_empty());
    assert_eq!(h.ids(d1, &with("assigned")).await, [b1]);
    assert!(h.ids(p1, &with("completed")).await.is_empty());
    let listed = h.items(p2, "/api/v1/bookings").await;
    assert_eq!(listed[0]["status"], "completed");
    assert_eq!(listed[0]["doctor_id"], d1.user_id.to_string());
    for status in ["", "paid", "PENDING"] {
        h.get(boss, &with(status)).await.assert_names("status");
    }
}

#[tokio::test]
async fn cursor_paging_returns_every_booking_exactly_once() {
    let h = Herald::start().await;
    let (alice, boss) = (patient(), admin());
    let mut requested = Vec::new();
    for n in 0..7 {
        let who = if n % 2 == 0 { alice } else { patient() };
        requested.push(h.booking(who).await);
    }
    requested.reverse();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/bookings?limit=3&cursor={cursor}"),
            None => "/api/v1/bookings?limit=3".to_owned(),
        };
        let page = h.ok(boss, &path).await;
        let items = page["items"].as_array().unwrap();
        sizes.push(items.len());
        seen.extend(ids(items));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(seen, requested);

    let own: Vec<Uuid> = requested.iter().step_by(2).copied().collect();
    let first = h.ok(alice, "/api/v1/bookings?limit=2").await;
    let next = first["next_cursor"].as_str().unwrap();
    let second = h
        .ok(alice, &format!("/api/v1/bookings?limit=2&cursor={next}"))
        .await;
    assert_eq!(second["next_cursor"], Value::Null, "{second}");
    let mut pages = ids(first["items"].as_array().unwrap());
    pages.extend(ids(second["items"].as_array().unwrap()));
    assert_eq!(pages, own);

    for limit in ["0", "201", "many"] {
        h.get(boss, &format!("/api/v1/bookings?limit={limit}"))
            .await
            .assert_names("limit");
    }
    h.get(boss, "/api/v1/bookings?cursor=abc")
        .await
        .assert_names("cursor");
}

#[tokio::test]
async fn a_booking_is_shown_to_its_patient_its_doctor_and_admins_with_its_payment_state() {
    let h = Herald::start().await;
    let (alice, doc) = (patient(), doctor());
    let booking = h.booking(alice).await;
    let path = format!("/api/v1/bookings/{booking}");

    let shown = h.ok(alice, &path).await;
    assert_eq!(shown["id"], booking.to_string());
    assert_eq!(shown["patient_id"], alice.user_id.to_string());
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["paid"], false);
    assert_eq!(shown["payment_status"], Value::Null);
    assert_eq!(shown["amount_minor"], PRICE);
    h.refused(doc, &path, StatusCode::NOT_FOUND).await;

    h.assign(doc, booking, doc).await;
    for reader in [alice, doc, admin()] {
        let shown = h.ok(reader, &path).await;
        assert_eq!(shown["status"], "assigned");
        assert_eq!(shown["doctor_id"], doc.user_id.to_string());
    }
    h.refused(patient(), &path, StatusCode::NOT_FOUND).await;
    h.refused(doctor(), &path, StatusCode::NOT_FOUND).await;
    h.refused(auditor(), &path, StatusCode::FORBIDDEN).await;
    let unknown = format!("/api/v1/bookings/{}", Uuid::new_v4());
    h.refused(admin(), &unknown, StatusCode::NOT_FOUND).await;

    let payment = h.run(alice, pay(booking)).await.id;
    let shown = h.ok(alice, &path).await;
    assert_eq!(shown["paid"], false);
    assert_eq!(shown["payment_status"], "pending");
    assert_eq!(shown["payment_id"], payment.to_string());
}

#[tokio::test]
async fn a_payment_is_shown_to_the_bookings_patient_and_admins_only() {
    let h = Herald::start().await;
    let (alice, doc) = (patient(), doctor());
    let booking = h.booking(alice).await;
    let unpaid = h.booking(alice).await;
    h.assign(doc, booking, doc).await;
    let payment = h.run(alice, pay(booking)).await.id;
    let (one, of_booking) = (
        format!("/api/v1/payments/{payment}"),
        format!("/api/v1/payments?booking_id={booking}"),
    );

    for reader in [alice, admin()] {
        let shown = h.ok(reader, &one).await;
        assert_eq!(shown["id"], payment.to_string());
        assert_eq!(shown["booking_id"], booking.to_string());
        assert_eq!(shown["method"], "card");
        assert_eq!(shown["amount_minor"], PRICE);
        assert_eq!(shown["currency"], "RUB");
        assert_eq!(shown["status"], "pending");
        assert!(shown["provider_payment_id"].is_string(), "{shown}");
        assert!(shown["confirmation_url"].is_string(), "{shown}");
        assert_eq!(h.ids(reader, &of_booking).await, [payment]);
    }
    for reader in [patient(), doc, doctor()] {
        h.refused(reader, &one, StatusCode::NOT_FOUND).await;
        h.refused(reader, &of_booking, StatusCode::NOT_FOUND).await;
    }
    let unpaid = format!("/api/v1/payments?booking_id={unpaid}");
    assert!(h.items(alice, &unpaid).await.is_empty());
    let unknown = Uuid::new_v4();
    h.refused(
        admin(),
        &format!("/api/v1/payments/{unknown}"),
        StatusCode::NOT_FOUND,
    )
    .await;
    h.refused(
        admin(),
        &format!("/api/v1/payments?booking_id={unknown}"),
        StatusCode::NOT_FOUND,
    )
    .await;
    for query in ["", "?booking_id=", "?booking_id=not-a-uuid"] {
        h.get(admin(), &format!("/api/v1/payments{query}"))
            .await
            .assert_names("booking_id");
    }
}

#[tokio::test]
async fn the_dashboard_counts_bookings_and_payments_by_status_for_admins_only() {
    let h = Herald::start().await;
    let (alice, doc, boss) = (patient(), doctor(), admin());
    let waiting = h.booking(alice).await;
    let visiting = h.booking(alice).await;
    let visited = h.booking(alice).await;
    let called_off = h.booking(alice).await;
    h.assign(doc, visiting, doc).await;
    h.assign(doc, visited, doc).await;
    h.run(
        doc,
        post(format!("/api/v1/bookings/{visited}/complete"), json!({})),
    )
    .await;
    h.run(
        alice,
        post(
            format!("/api/v1/bookings/{called_off}/cancel"),
            json!({ "reason": "better" }),
        ),
    )
    .await;
    h.run(alice, pay(waiting)).await;
    let kept = h.run(alice, pay(visiting)).await.id;
    h.succeed(kept, visiting).await;
    let returned = h.run(alice, pay(visited)).await.id;
    h.succeed(returned, visited).await;
    h.run(
        boss,
        post(
            format!("/api/v1/payments/{returned}/refund"),
            json!({ "reason": "not needed" }),
        ),
    )
    .await;

    let summary = h.ok(boss, "/api/v1/dashboard/summary").await;
    assert_eq!(
        summary["bookings_by_status"],
        json!({ "pending": 1, "assigned": 1, "completed": 1, "cancelled": 1 })
    );
    assert_eq!(
        summary["payments_by_status"],
        json!({ "pending": 1, "succeeded": 1, "failed": 0, "refund_pending": 1, "refunded": 0 })
    );
    assert_eq!(
        summary["revenue"],
        json!([{ "currency": "RUB", "amount_minor": 2 * PRICE }])
    );
    let paid = h.ok(alice, &format!("/api/v1/bookings/{visiting}")).await;
    assert_eq!(paid["paid"], true);
    assert_eq!(paid["payment_status"], "succeeded");
    for reader in [alice, doc, auditor()] {
        h.refused(reader, "/api/v1/dashboard/summary", StatusCode::FORBIDDEN)
            .await;
    }
}

/// Every read path, with ids that need not exist.
fn read_paths() -> Vec<String> {
    let id = Uuid::new_v4();
    vec![
        "/api/v1/chats".to_owned(),
        format!("/api/v1/chats/{id}"),
        format!("/api/v1/chats/{id}/messages"),
        "/api/v1/bookings".to_owned(),
        format!("/api/v1/bookings/{id}"),
        format!("/api/v1/payments/{id}"),
        format!("/api/v1/payments?booking_id={id}"),
        "/api/v1/dashboard/summary".to_owned(),
    ]
}

#[tokio::test]
async fn every_read_needs_a_token_and_a_well_formed_consistency_token() {
    let app = TestApp::spawn().await;
    let boss = admin();
    for path in read_paths() {
        let anonymous = app.request(Method::GET, &path);
        Reply::send(anonymous)
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);

        for bad in ["not-a-token", "YS9iL2M"] {
            read(&app, boss, &path, bad)
                .await
                .assert_problem(StatusCode::BAD_REQUEST);
            let in_header = app
                .request(Method::GET, &path)
                .bearer_auth(app.token(boss))
                .header("x-consistency", bad);
            Reply::send(in_header)
                .await
                .assert_problem(StatusCode::BAD_REQUEST);
        }
    }
}

#[tokio::test]
async fn a_token_for_someone_elses_booking_tells_no_more_than_one_for_none() {
    let h = Herald::start().await;
    let (alice, mallory) = (patient(), patient());
    let theirs = h.run(alice, visit()).await;
    let none = ConsistencyToken {
        aggregate_type: "Booking".to_owned(),
        aggregate_id: Uuid::new_v4().to_string(),
        version: 1,
    }
    .encode();
    h.app.wait_for_projections().await;

    let with_theirs = read(&h.app, mallory, "/api/v1/bookings", &theirs.token).await;
    let with_none = read(&h.app, mallory, "/api/v1/bookings", &none).await;
    assert_eq!(with_theirs.status, StatusCode::OK, "{}", with_theirs.body);
    assert_eq!(with_none.status, with_theirs.status);
    assert_eq!(with_none.body, with_theirs.body);
}

#[tokio::test]
async fn a_read_gives_up_after_about_two_seconds_when_its_projections_lag_behind() {
    let mut h = Herald::start().await;
    let alice = patient();
    h.app.stop_pipeline().await;
    let chat = h.chat(alice, &[doctor()]).await;

    let started = Instant::now();
    let reply = h.get(alice, "/api/v1/chats").await;
    reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.headers.contains_key("retry-after"),
        "{:?}",
        reply.headers
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );

    h.app.start_pipeline().await;
    assert_eq!(h.ids(alice, "/api/v1/chats").await, [chat.id]);
}

#[tokio::test]
async fn a_sent_message_is_always_readable_with_its_token_at_once() {
    let h = Herald::start().await;
    let (alice, bob) = (patient(), doctor());
    let chat = h.chat(alice, &[bob]).await.id;
    let messages = format!("/api/v1/chats/{chat}/messages?limit=1");
    for n in 1..=20 {
        let sent = h.run(alice, send(chat, &format!("message {n}"))).await;
        let reply = if n % 2 == 0 {
            read(&h.app, bob, &messages, &sent.token).await
        } else {
            let request = h
                .app
                .request(Method::GET, &messages)
                .bearer_auth(h.app.token(bob))
                .header("x-consistency", &sent.token);
            Reply::send(request).await
        };
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["items"][0]["id"], sent.id.to_string(), "{n}");
        assert_eq!(reply.body["items"][0]["seq"], n);
    }
}

#[tokio::test]
async fn a_bookings_status_is_always_readable_with_its_token_at_once() {
    let h = Herald::start().await;
    let (alice, doc) = (patient(), doctor());
    for _ in 0..20 {
        let requested = h.run(alice, visit()).await;
        let path = format!("/api/v1/bookings/{}", requested.id);
        let reply = read(&h.app, alice, &path, &requested.token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["status"], "pending");

        let assigned = h.assign(doc, requested.id, doc).await;
        let reply = read(&h.app, doc, &path, &assigned.token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["status"], "assigned");
        assert_eq!(reply.body["doctor_id"], doc.user_id.to_string());
    }
}

#[tokio::test]
async fn every_read_is_answered_304_with_no_body_while_the_callers_copy_is_current() {
    let h = Herald::start().await;
    let (alice, doc, boss) = (patient(), doctor(), admin());
    let chat = h.chat(alice, &[doc]).await.id;
    h.run(doc, send(chat, "hello")).await;
    let booking = h.booking(alice).await;
    let payment = h.run(alice, pay(booking)).await.id;

    for (reader, path) in [
        (alice, "/api/v1/chats".to_owned()),
        (alice, format!("/api/v1/chats/{chat}")),
        (alice, format!("/api/v1/chats/{chat}/messages?limit=50")),
        (alice, "/api/v1/bookings?limit=50".to_owned()),
        (alice, format!("/api/v1/bookings/{booking}")),
        (alice, format!("/api/v1/payments/{payment}")),
        (alice, format!("/api/v1/payments?booking_id={booking}")),
        (boss, "/api/v1/dashboard/summary".to_owned()),
    ] {
        let etag = h.etag(reader, &path).await;
        let again = h.get_holding(reader, &path, &etag).await;
        assert_eq!(
            again.status,
            StatusCode::NOT_MODIFIED,
            "{path}: {}",
            again.body
        );
        assert_eq!(again.body, Value::String(String::new()), "{path}");
        assert_eq!(again.headers["etag"], etag.as_str(), "{path}");
        // The client keeps its copy itself; no cache along the way does.
        assert_eq!(again.headers["cache-control"], "no-store", "{path}");
        let listed = h
            .get_holding(reader, &path, &format!("\"other\", W/{etag}"))
            .await;
        assert_eq!(listed.status, StatusCode::NOT_MODIFIED, "{path}");
    }
}

#[tokio::test]
async fn a_change_gives_a_read_a_new_tag_and_the_old_one_gets_the_full_answer() {
    let h = Herald::start().await;
    let (alice, doc) = (patient(), doctor());
    let booking = h.booking(alice).await;
    let chat = h.chat(alice, &[doc]).await.id;
    let one = format!("/api/v1/bookings/{booking}");
    let list = "/api/v1/bookings?limit=50";
    let messages = format!("/api/v1/chats/{chat}/messages?limit=50");
    let before = [
        h.etag(alice, &one).await,
        h.etag(alice, list).await,
        h.etag(alice, &messages).await,
    ];

    h.assign(doc, booking, doc).await;
    h.run(doc, send(chat, "a new message")).await;

    for (path, old) in [
        (one.as_str(), &before[0]),
        (list, &before[1]),
        (&messages, &before[2]),
    ] {
        let reply = h.get_holding(alice, path, old).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert_ne!(reply.headers["etag"], old.as_str(), "{path}");
    }
    assert_eq!(h.ok(alice, &one).await["status"], "assigned");
}

#[tokio::test]
async fn reads_show_peoples_names_and_a_new_name_gives_them_new_tags() {
    let h = Herald::start().await;
    let (alice, doc) = (h.app.enroll(patient()).await, doctor());
    let booking = h.booking(alice).await;
    h.assign(doc, booking, doc).await;
    let chat = h.chat(alice, &[doc]).await.id;
    let nameless = h.booking(patient()).await;
    let one = format!("/api/v1/bookings/{booking}");
    let list = "/api/v1/bookings?limit=50";
    let shown_chat = format!("/api/v1/chats/{chat}");
    let chats = "/api/v1/chats";

    let shown = h.ok(alice, &one).await;
    assert_eq!(
        (&shown["patient_name"], &shown["doctor_name"]),
        (&json!("Test patient"), &json!("Test doctor"))
    );
    let names = json!({ alice.user_id.to_string(): "Test patient", doc.user_id.to_string(): "Test doctor" });
    assert_eq!(h.ok(alice, &shown_chat).await["member_names"], names);
    assert_eq!(h.items(alice, chats).await[0]["member_names"], names);
    let unnamed = h.ok(admin(), &format!("/api/v1/bookings/{nameless}")).await;
    assert_eq!(
        (&unnamed["patient_name"], &unnamed["doctor_name"]),
        (&Value::Null, &Value::Null)
    );
    let before = [
        h.etag(alice, &one).await,
        h.etag(alice, list).await,
        h.etag(alice, &shown_chat).await,
        h.etag(alice, chats).await,
    ];

    let renamed = h
        .app
        .send(
            Method::PATCH,
            "/api/v1/me",
            doc,
            Some(json!({ "name": "Maria Ivanova" })),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);

    for (path, old) in [&one, list, &shown_chat, chats].into_iter().zip(&before) {
        let reply = h.get_holding(alice, path, old).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert!(
            reply.body.to_string().contains("Maria Ivanova"),
            "{path}: {}",
            reply.body
        );
    }
}

#[tokio::test]
async fn a_read_again_unchanged_answers_alike_and_after_a_change_shows_it() {
    let h = Herald::start().await;
    let (alice, bob, doc) = (patient(), patient(), doctor());
    let first = h.booking(alice).await;
    h.booking(bob).await;
    let chat = h.chat(alice, &[doc]).await.id;
    h.run(doc, send(chat, "hello")).await;
    h.app.wait_for_projections().await;
    let list = "/api/v1/bookings?limit=50";
    let messages = format!("/api/v1/chats/{chat}/messages?limit=50");
    // Read as a poller without a tag does: the same request each time.
    let read = |actor: Actor, path: String| {
        let app = &h.app;
        async move { app.send(Method::GET, &path, actor, None).await }
    };

    let one = format!("/api/v1/bookings/{first}");
    for path in [list.to_owned(), messages.clone(), one.clone()] {
        let once = read(alice, path.clone()).await;
        let twice = read(alice, path.clone()).await;
        assert_eq!(twice.status, StatusCode::OK, "{path}: {}", twice.body);
        assert_eq!(twice.body, once.body, "{path}");
        assert_eq!(twice.headers["etag"], once.headers["etag"], "{path}");
        assert_eq!(twice.headers["content-type"], "application/json", "{path}");
    }
    // Another caller asking the same gets their own answer.
    assert_eq!(
        ids(read(bob, list.to_owned()).await.body["items"]
            .as_array()
            .unwrap())
        .len(),
        1
    );

    let second = h.booking(alice).await;
    h.run(doc, send(chat, "again")).await;
    h.app.wait_for_projections().await;
    let listed = read(alice, list.to_owned()).await;
    assert_eq!(
        ids(listed.body["items"].as_array().unwrap()),
        [second, first]
    );
    let page = read(alice, messages).await;
    assert_eq!(page.body["items"][0]["body"], "again", "{}", page.body);
    h.assign(doc, first, doc).await;
    h.app.wait_for_projections().await;
    let booking = read(alice, one).await;
    assert_eq!(booking.body["status"], "assigned", "{}", booking.body);
}

#[tokio::test]
async fn a_patients_bookings_list_keeps_its_tag_while_others_change_and_moves_with_their_own() {
    let h = Herald::start().await;
    let (alice, bob, doc) = (patient(), patient(), doctor());
    let first = h.booking(alice).await;
    let chat = h.chat(alice, &[doc]).await.id;
    let list = "/api/v1/bookings?limit=50";
    let held = h.etag(alice, list).await;

    // Another patient's booking and a chat message change other lists.
    h.booking(bob).await;
    h.run(doc, send(chat, "hello")).await;
    h.app.wait_for_projections().await;
    let unchanged = h.get_holding(alice, list, &held).await;
    assert_eq!(
        unchanged.status,
        StatusCode::NOT_MODIFIED,
        "{}",
        unchanged.body
    );

    // Her own booking changing moves it, and so does a new one.
    h.assign(doc, first, doc).await;
    h.app.wait_for_projections().await;
    let assigned = h.get_holding(alice, list, &held).await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.body);
    assert_eq!(assigned.body["items"][0]["status"], "assigned");
    let held = assigned.headers["etag"].to_str().unwrap().to_owned();
    let second = h.booking(alice).await;
    h.app.wait_for_projections().await;
    let added = h.get_holding(alice, list, &held).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    assert_eq!(
        ids(added.body["items"].as_array().unwrap()),
        [second, first]
    );
}

#[tokio::test]
async fn a_tag_held_by_someone_else_earns_no_304_and_tells_nothing() {
    let h = Herald::start().await;
    let (alice, bob, doc) = (patient(), patient(), doctor());
    let booking = h.booking(alice).await;
    h.booking(bob).await;
    let chat = h.chat(alice, &[doc]).await.id;
    let one = format!("/api/v1/bookings/{booking}");
    let messages = format!("/api/v1/chats/{chat}/messages");
    let list = "/api/v1/bookings?limit=50";

    let booking_tag = h.etag(alice, &one).await;
    let chat_tag = h.etag(alice, &messages).await;
    let list_tag = h.etag(alice, list).await;

    h.get_holding(bob, &one, &booking_tag)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.get_holding(bob, &messages, &chat_tag)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.get_holding(bob, &one, "*")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let own = h.get_holding(bob, list, &list_tag).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(h.items(bob, list).await.len(), 1);
}

#[tokio::test]
async fn pages_neither_skip_nor_repeat_while_new_bookings_and_messages_land() {
    let h = Herald::start().await;
    let (alice, doc, boss) = (patient(), doctor(), admin());
    let mut before = Vec::new();
    for _ in 0..6 {
        before.push(h.booking(alice).await);
    }
    before.reverse();
    let chat = h.chat(alice, &[doc]).await.id;
    for n in 0..6 {
        h.run(doc, send(chat, &format!("before {n}"))).await;
    }

    let mut seen = Vec::new();
    let mut path = "/api/v1/bookings?limit=2".to_owned();
    let mut seqs_seen = Vec::new();
    let mut messages = format!("/api/v1/chats/{chat}/messages?limit=2");
    loop {
        let page = h.ok(boss, &path).await;
        seen.extend(ids(page["items"].as_array().unwrap()));
        let messages_page = h.ok(alice, &messages).await;
        seqs_seen.extend(seqs(&messages_page));
        // New ones land between every two pages.
        h.booking(alice).await;
        h.run(doc, send(chat, "meanwhile")).await;
        match (
            page["next_cursor"].as_str(),
            messages_page["next_before_seq"].as_i64(),
        ) {
            (Some(cursor), Some(before_seq)) => {
                path = format!("/api/v1/bookings?limit=2&cursor={cursor}");
                messages = format!("/api/v1/chats/{chat}/messages?limit=2&before_seq={before_seq}");
            }
            (None, None) => break,
            other => panic!("the two lists should end together: {other:?}"),
        }
    }

    assert_eq!(seen, before);
    assert_eq!(seqs_seen, vec![6, 5, 4, 3, 2, 1]);
}

#[tokio::test]
async fn an_empty_query_value_is_refused_naming_its_parameter() {
    let h = Herald::start().await;
    let (alice, boss) = (patient(), admin());
    let chat = h.chat(alice, &[doctor()]).await.id;
    for (reader, path, field) in [
        (boss, "/api/v1/bookings?limit=".to_owned(), "limit"),
        (boss, "/api/v1/bookings?cursor=".to_owned(), "cursor"),
        (
            alice,
            format!("/api/v1/chats/{chat}/messages?before_seq="),
            "before_seq",
        ),
        (
            alice,
            format!("/api/v1/chats/{chat}/messages?limit="),
            "limit",
        ),
        (
            alice,
            "/api/v1/payments?booking_id=".to_owned(),
            "booking_id",
        ),
        (boss, "/api/v1/events?after=".to_owned(), "after"),
        (
            boss,
            "/api/v1/events?aggregate_type=".to_owned(),
            "aggregate_type",
        ),
    ] {
        h.get(reader, &path).await.assert_names(field);
    }
}
