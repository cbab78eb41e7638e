//! Paying for a booking end to end, over HTTP: the sandbox provider's page,
//! its signed notifications, and the process manager that settles bookings
//! and refunds cancelled ones.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::gateway::{PaymentGateway, Resilience, Resilient, SandboxGateway};
use commands::ConsistencyToken;
use common::{admin, patient, post, Reply, StoredEvent, TestApp};
use domain::values::Actor;
use projections::Projection;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use uuid::Uuid;

/// What `TestApp::booking` charges, and how a provider writes it.
const PRICE: i64 = 150_000;
const PRICE_TEXT: &str = "1500.00";

/// Waits for `condition`, at most 20 s.
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The stored events of `event_type`, oldest first.
pub(crate) async fn events_of(app: &TestApp, event_type: &str) -> Vec<StoredEvent> {
    app.events_after(0)
        .await
        .into_iter()
        .filter(|event| event.event_type == event_type)
        .collect()
}

/// Waits until exactly `count` events of `event_type` are stored and returns them.
pub(crate) async fn wait_for(app: &TestApp, event_type: &str, count: usize) -> Vec<StoredEvent> {
    eventually(&format!("{count} {event_type} are stored"), || async {
        events_of(app, event_type).await.len() >= count
    })
    .await;
    let events = events_of(app, event_type).await;
    assert_eq!(events.len(), count, "{event_type}: {events:?}");
    events
}

/// The read-your-writes token of a stored event's command.
fn token_of(event: &StoredEvent) -> String {
    ConsistencyToken {
        aggregate_type: event.aggregate_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        version: event.sequence as u64,
    }
    .encode()
}

/// `GET path?consistency=token` as `actor`; it must answer 200.
async fn read(app: &TestApp, actor: Actor, path: &str, token: &str) -> Value {
    let reply = app
        .send(
            Method::GET,
            &format!("{path}?consistency={token}"),
            actor,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    reply.body
}

/// A patient's booking and the payment they started for it.
pub(crate) struct Paying {
    patient: Actor,
    booking: Uuid,
    payment: Uuid,
    /// The `POST /payments` answer.
    answer: Value,
}

impl Paying {
    fn page(&self) -> &str {
        self.answer["confirmation_url"].as_str().unwrap()
    }

    fn provider_payment_id(&self) -> &str {
        self.answer["provider_payment_id"].as_str().unwrap()
    }
}

/// A booking of a new patient, and a payment they started for it.
async fn start_paying(app: &TestApp) -> Paying {
    let patient = patient();
    let booking = app.booking(patient).await;
    let reply = app
        .post(
            "/api/v1/payments",
            patient,
            json!({ "booking_id": booking, "method": "card" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    Paying {
        patient,
        booking,
        payment: reply.id(),
        answer: reply.body,
    }
}

/// What a person does on the sandbox page: presses "success" or "failure".
pub(crate) async fn choose(app: &TestApp, page: &str, choice: &str) -> Reply {
    Reply::send(app.client.post(format!("{page}/{choice}"))).await
}

/// A provider notification about `payment`.
fn notification(event: &str, payment: Uuid, object_id: &str, value: &str) -> Value {
    json!({
        "type": "notification",
        "event": event,
        "object": {
            "id": object_id,
            "status": "succeeded",
            "amount": { "value": value, "currency": "RUB" },
            "metadata": { "payment_id": payment.to_string() },
        },
    })
}

/// Sends `body` to the webhook with `signature` as its signature header.
async fn deliver_signed_as(app: &TestApp, body: &[u8], signature: Option<String>) -> Reply {
    let mut request = app
        .request(Method::POST, "/webhooks/payments")
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-herald-signature", signature);
    }
    Reply::send(request).await
}

/// Sends `notification` signed as the provider would, dated `age_secs` ago.
async fn deliver(app: &TestApp, notification: &Value, age_secs: i64) -> Reply {
    let body = serde_json::to_vec(notification).unwrap();
    let signature = app
        .webhook_secret
        .sign(Utc::now().timestamp() - age_secs, &body);
    deliver_signed_as(app, &body, Some(signature)).await
}

/// `request` signed in as the shop the sandbox serves.
fn as_the_shop(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let shop = common::shop();
    request.basic_auth(shop.shop_id, Some(shop.secret_key.expose_secret()))
}

/// A charge opened at the sandbox's API for `payment`, as `request` asks.
async fn open_charge(request: reqwest::RequestBuilder, payment: Uuid, key: &str) -> Reply {
    Reply::send(request.header("idempotence-key", key).json(&json!({
        "amount": { "value": PRICE_TEXT, "currency": "RUB" },
        "payment_method_type": "bank_card",
        "description": "a visit",
        "metadata": { "payment_id": payment.to_string() },
    })))
    .await
}

/// A payment the patient confirmed on the sandbox page, once Herald stored it.
pub(crate) async fn paid_through_the_sandbox(app: &TestApp) -> Paying {
    let paying = start_paying(app).await;
    let chosen = choose(app, paying.page(), "succeed").await;
    assert_eq!(chosen.status, StatusCode::OK, "{}", chosen.body);
    wait_for(app, "PaymentSucceeded", 1).await;
    paying
}

#[tokio::test]
async fn a_booking_paid_on_the_sandbox_page_is_marked_paid_and_refunded_by_itself_when_cancelled() {
    let app = TestApp::spawn_with_payments().await;
    let paying = start_paying(&app).await;
    let (alice, booking, payment) = (paying.patient, paying.booking, paying.payment);
    assert_eq!(paying.answer["amount_minor"], PRICE);
    assert_eq!(paying.answer["status"], "pending");
    let page = paying.page().to_owned();
    assert!(
        page.starts_with(&format!("{}/sandbox/payments/", app.address)),
        "{page}"
    );

    // The confirmation page is plain HTML a person can use.
    let shown = app.client.get(&page).send().await.unwrap();
    assert_eq!(shown.status(), StatusCode::OK);
    assert!(shown.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = shown.text().await.unwrap();
    assert!(html.contains(PRICE_TEXT) && html.contains("RUB"), "{html}");
    assert!(
        html.contains("/succeed") && html.contains("/fail"),
        "{html}"
    );

    let chosen = choose(&app, &page, "succeed").await;
    assert_eq!(chosen.status, StatusCode::OK, "{}", chosen.body);

    // The signed notification settles the payment; the process manager the booking.
    let succeeded = &wait_for(&app, "PaymentSucceeded", 1).await[0];
    let notification_id = format!("payment.succeeded:{}", paying.provider_payment_id());
    assert_eq!(succeeded.metadata["role"], "system");
    assert_eq!(succeeded.metadata["causation_id"], notification_id.as_str());
    assert_eq!(
        succeeded.metadata["idempotency_key"],
        format!("webhook/{notification_id}").as_str()
    );
    let paid = &wait_for(&app, "BookingPaid", 1).await[0];
    assert_eq!(paid.aggregate_id, booking.to_string());
    assert_eq!(paid.metadata["role"], "system");
    assert_eq!(
        paid.metadata["causation_id"],
        succeeded.event_id.to_string().as_str()
    );
    assert_eq!(
        paid.metadata["correlation_id"],
        succeeded.metadata["correlation_id"]
    );
    let shown = read(
        &app,
        alice,
        &format!("/api/v1/bookings/{booking}"),
        &token_of(paid),
    )
    .await;
    assert_eq!(shown["paid"], true, "{shown}");
    assert_eq!(shown["payment_status"], "succeeded", "{shown}");

    // Cancelling the paid booking refunds it through the provider.
    let cancelled = app
        .post(
            &format!("/api/v1/bookings/{booking}/cancel"),
            alice,
            json!({ "reason": "feeling better" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    let requested = &wait_for(&app, "RefundRequested", 1).await[0];
    let cancellation = &events_of(&app, "BookingCancelled").await[0];
    assert_eq!(requested.aggregate_id, payment.to_string());
    assert_eq!(requested.metadata["role"], "system");
    assert_eq!(
        requested.metadata["causation_id"],
        cancellation.event_id.to_string().as_str()
    );
    let refunded = &wait_for(&app, "PaymentRefunded", 1).await[0];
    let refund_id = refunded.field("provider_refund_id").as_str().unwrap();
    assert!(refund_id.starts_with("sbx_refund_"), "{refund_id}");
    let shown = read(
        &app,
        alice,
        &format!("/api/v1/payments/{payment}"),
        &token_of(refunded),
    )
    .await;
    assert_eq!(shown["status"], "refunded", "{shown}");
    assert_eq!(shown["provider_payment_id"], paying.provider_payment_id());
    assert_eq!(shown["confirmation_url"], page.as_str());
    let html = app
        .client
        .get(&page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Status: <strong>refunded</strong>"), "{html}");
    // The booking was paid for once; where the money is now is the payment's.
    let shown = read(
        &app,
        alice,
        &format!("/api/v1/bookings/{booking}"),
        &token_of(refunded),
    )
    .await;
    assert_eq!(
        (&shown["status"], &shown["paid"], &shown["payment_status"]),
        (&json!("cancelled"), &json!(true), &json!("refunded")),
        "{shown}"
    );

    // Nothing acts twice: settle, then check every count once more.
    app.wait_for_projections().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (event_type, count) in [
        ("PaymentSucceeded", 1),
        ("BookingPaid", 1),
        ("RefundRequested", 1),
        ("PaymentRefunded", 1),
    ] {
        assert_eq!(
            events_of(&app, event_type).await.len(),
            count,
            "{event_type}"
        );
    }
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM sandbox_refunds")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(refunds, 1);
}

#[tokio::test]
async fn every_kind_of_booking_and_payment_event_rebuilds_into_the_rows_the_live_workers_wrote() {
    let app = TestApp::spawn_with_payments().await;
    // A payment declined; another that pays the booking, which is then
    // cancelled and so refunded.
    let paying = start_paying(&app).await;
    choose(&app, paying.page(), "fail").await;
    wait_for(&app, "PaymentFailed", 1).await;
    let again = app
        .post(
            "/api/v1/payments",
            paying.patient,
            json!({ "booking_id": paying.booking, "method": "sbp" }),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    let page = again.body["confirmation_url"].as_str().unwrap();
    choose(&app, page, "succeed").await;
    wait_for(&app, "BookingPaid", 1).await;
    let cancelled = app
        .post(
            &format!("/api/v1/bookings/{}/cancel", paying.booking),
            paying.patient,
            json!({ "reason": "feeling better" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    wait_for(&app, "PaymentRefunded", 1).await;
    // A payment still pending, and bookings assigned, completed, cancelled
    // unpaid, or only requested.
    start_paying(&app).await;
    let doctor = app.enroll(common::doctor()).await;
    app.bookings_in_every_status(patient(), doctor).await;

    app.wait_for_projections().await;
    for projection in [
        Projection::Bookings,
        Projection::Payments,
        Projection::Summary,
        Projection::Activity,
    ] {
        common::assert_matches_rebuild(&app.pool, projection).await;
    }
}

#[tokio::test]
async fn a_pending_payment_blocks_another_for_the_same_booking_but_a_failed_one_does_not() {
    let app = TestApp::spawn().await;
    let paying = start_paying(&app).await;
    let again = post(
        "/api/v1/payments",
        json!({ "booking_id": paying.booking, "method": "sbp" }),
    );

    let refused = app
        .refuses(paying.patient, again.clone(), StatusCode::CONFLICT)
        .await;
    assert_eq!(
        refused.body["detail"],
        "a payment for this booking is already in progress"
    );
    let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM sandbox_payments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(charges, 1, "no charge is opened for a refused payment");

    let declined = choose(&app, paying.page(), "fail").await;
    assert_eq!(declined.status, StatusCode::OK, "{}", declined.body);
    wait_for(&app, "PaymentFailed", 1).await;
    let second = app
        .accepts(paying.patient, again.clone(), StatusCode::CREATED)
        .await;
    assert_ne!(second.reply.id(), paying.payment);
    assert!(second.reply.body["confirmation_url"].is_string());
    app.refuses(paying.patient, again, StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn a_repeated_payment_request_answers_the_first_without_opening_another_charge() {
    let app = TestApp::spawn().await;
    let alice = patient();
    let booking = app.booking(alice).await;
    let request = || {
        app.request(Method::POST, "/api/v1/payments")
            .bearer_auth(app.token(alice))
            .header("idempotency-key", "pay-once")
            .json(&json!({ "booking_id": booking, "method": "card" }))
    };
    let first = Reply::send(request()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);

    let again = app.stores_nothing(Reply::send(request())).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(
        again.body["confirmation_url"],
        first.body["confirmation_url"]
    );
    let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM sandbox_payments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(charges, 1);
}

#[tokio::test]
async fn duplicated_and_late_notifications_change_nothing() {
    let app = TestApp::spawn().await;
    let paying = paid_through_the_sandbox(&app).await;
    let success = notification(
        "payment.succeeded",
        paying.payment,
        paying.provider_payment_id(),
        PRICE_TEXT,
    );

    for _ in 0..2 {
        let repeated = app.stores_nothing(deliver(&app, &success, 0)).await;
        assert_eq!(repeated.status, StatusCode::OK, "{}", repeated.body);
        assert_eq!(repeated.headers["idempotent-replayed"], "true");
    }
    let late_failure = notification(
        "payment.canceled",
        paying.payment,
        paying.provider_payment_id(),
        PRICE_TEXT,
    );
    let answered = app.stores_nothing(deliver(&app, &late_failure, 0)).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.body);
    assert_eq!(events_of(&app, "PaymentSucceeded").await.len(), 1);
    assert!(events_of(&app, "PaymentFailed").await.is_empty());
}

#[tokio::test]
async fn a_refund_confirmed_before_it_was_requested_is_refused_until_an_admin_requests_it() {
    let app = TestApp::spawn_with_payments().await;
    let paying = paid_through_the_sandbox(&app).await;
    wait_for(&app, "BookingPaid", 1).await;
    let mut early = notification(
        "refund.succeeded",
        paying.payment,
        "early-refund",
        PRICE_TEXT,
    );
    early["object"]["payment_id"] = json!(paying.provider_payment_id());

    // Out of order: answered 409, so the provider delivers it again later.
    app.stores_nothing(deliver(&app, &early, 0))
        .await
        .assert_problem(StatusCode::CONFLICT);

    let refund = post(
        format!("/api/v1/payments/{}/refund", paying.payment),
        json!({ "reason": "charged by mistake" }),
    );
    app.refuses(paying.patient, refund.clone(), StatusCode::FORBIDDEN)
        .await;
    // The process manager acts on its own events meanwhile, so the answer is
    // checked rather than everything stored after it.
    let requested = app.call(admin(), &refund).await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.body);
    assert_eq!(requested.body["status"], "refund_pending");
    let refunded = &wait_for(&app, "PaymentRefunded", 1).await[0];
    assert!(refunded
        .field("provider_refund_id")
        .as_str()
        .unwrap()
        .starts_with("sbx_refund_"));

    // Delivered again once the payment is refunded, it changes nothing.
    let late = app.stores_nothing(deliver(&app, &early, 0)).await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
}

#[tokio::test]
async fn nobody_pays_for_someone_elses_payment_with_a_charge_of_their_own() {
    let app = TestApp::spawn_with_payments().await;
    let victim = start_paying(&app).await;
    let charges = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sandbox_payments")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let opened_by_herald = charges().await;

    // The sandbox's API opens charges for its shop only.
    let url = format!("{}/sandbox/api/payments", app.address);
    for (who, request) in [
        ("no credentials", app.client.post(&url)),
        (
            "a wrong secret key",
            app.client
                .post(&url)
                .basic_auth("test-shop", Some("guessed")),
        ),
        (
            "another shop",
            app.client
                .post(&url)
                .basic_auth("attacker", Some("ssssssssssssssssssssssssssssssss")),
        ),
    ] {
        let reply = open_charge(request, victim.payment, &format!("attack-{who}")).await;
        reply.assert_problem(StatusCode::UNAUTHORIZED);
        assert_eq!(charges().await, opened_by_herald, "{who}");
    }

    // A charge opened some other way, signed by the provider and naming the
    // victim's payment, settles nothing: it is not the charge Herald opened.
    let attackers = open_charge(
        as_the_shop(app.request(Method::POST, "/sandbox/api/payments")),
        victim.payment,
        "attacker-charge",
    )
    .await;
    assert_eq!(attackers.status, StatusCode::OK, "{}", attackers.body);
    let charge = attackers.body["id"].as_str().unwrap().to_owned();
    assert_ne!(charge, victim.provider_payment_id());
    for event in ["payment.succeeded", "payment.canceled"] {
        let forged = notification(event, victim.payment, &charge, PRICE_TEXT);
        let reply = app.stores_nothing(deliver(&app, &forged, 0)).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            reply.body["detail"],
            "the notification is not about the charge Herald asked the provider for"
        );
    }
    let page = attackers.body["confirmation_url"].as_str().unwrap();
    assert_eq!(choose(&app, page, "succeed").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(events_of(&app, "PaymentSucceeded").await.is_empty());
    // Read once the payment's start is in the read model, as its answer says.
    let status = app
        .send(
            Method::GET,
            &format!(
                "/api/v1/payments/{}?consistency={}",
                victim.payment,
                victim.answer["consistency"].as_str().unwrap()
            ),
            victim.patient,
            None,
        )
        .await;
    assert_eq!(status.body["status"], "pending", "{}", status.body);

    // The victim's own charge still settles their payment, and a refund
    // notification must name that charge too.
    assert_eq!(
        choose(&app, victim.page(), "succeed").await.status,
        StatusCode::OK
    );
    let succeeded = &wait_for(&app, "PaymentSucceeded", 1).await[0];
    assert_eq!(
        succeeded.field("provider_payment_id"),
        victim.provider_payment_id()
    );
    wait_for(&app, "BookingPaid", 1).await;
    let refund = post(
        format!("/api/v1/payments/{}/refund", victim.payment),
        json!({ "reason": "charged by mistake" }),
    );
    let requested = app.call(admin(), &refund).await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.body);
    wait_for(&app, "PaymentRefunded", 1).await;
    let mut forged_refund = notification("refund.succeeded", victim.payment, "r-1", PRICE_TEXT);
    forged_refund["object"]["payment_id"] = json!(charge);
    app.stores_nothing(deliver(&app, &forged_refund, 0))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn forged_and_stale_notifications_are_refused_and_store_nothing() {
    let app = TestApp::spawn().await;
    let paying = start_paying(&app).await;
    let success = notification(
        "payment.succeeded",
        paying.payment,
        paying.provider_payment_id(),
        PRICE_TEXT,
    );
    let body = serde_json::to_vec(&success).unwrap();
    let now = Utc::now().timestamp();
    let forger =
        api::provider::webhook::WebhookSecret::new(secrecy::SecretString::from("f".repeat(32)))
            .unwrap();
    let mut tampered = success.clone();
    tampered["object"]["amount"]["value"] = json!("1.00");
    let tampered = serde_json::to_vec(&tampered).unwrap();

    for (what, body, signature) in [
        ("no signature", body.clone(), None),
        (
            "a forged signature",
            body.clone(),
            Some(forger.sign(now, &body)),
        ),
        (
            "a tampered body",
            tampered,
            Some(app.webhook_secret.sign(now, &body)),
        ),
        (
            "a stale signature",
            body.clone(),
            Some(app.webhook_secret.sign(now - 301, &body)),
        ),
        (
            "a future signature",
            body.clone(),
            Some(app.webhook_secret.sign(now + 120, &body)),
        ),
        (
            "a malformed signature",
            body.clone(),
            Some("v1=abc".to_owned()),
        ),
    ] {
        let reply = app
            .stores_nothing(deliver_signed_as(&app, &body, signature))
            .await;
        reply.assert_problem(StatusCode::UNAUTHORIZED);
        assert!(
            reply.body["detail"].as_str().unwrap().contains("ignature"),
            "{what}: {}",
            reply.body
        );
    }
    let just_in_time = app.webhook_secret.sign(now - 290, &body);
    let accepted = deliver_signed_as(&app, &body, Some(just_in_time)).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
}

#[tokio::test]
async fn a_notification_of_another_amount_or_in_another_shape_is_refused_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let paying = start_paying(&app).await;
    let reference = paying.provider_payment_id().to_owned();

    let cheaper = notification("payment.succeeded", paying.payment, &reference, "1499.99");
    let refused = app.stores_nothing(deliver(&app, &cheaper, 0)).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.body["detail"],
        "the amount paid does not match the amount due"
    );

    for (notification, field) in [
        (
            notification("payment.waiting", paying.payment, &reference, PRICE_TEXT),
            "event",
        ),
        (
            notification("payment.succeeded", paying.payment, &reference, "1500,00"),
            "object.amount.value",
        ),
        (
            json!({ "type": "notification", "event": "payment.succeeded", "object": {
                "id": reference, "status": "succeeded",
                "amount": { "value": PRICE_TEXT, "currency": "RUB" },
                "metadata": { "payment_id": "not-a-uuid" } } }),
            "object.metadata.payment_id",
        ),
    ] {
        app.stores_nothing(deliver(&app, &notification, 0))
            .await
            .assert_names(field);
    }
    let body = b"not json";
    let signature = app.webhook_secret.sign(Utc::now().timestamp(), body);
    app.stores_nothing(deliver_signed_as(&app, body, Some(signature)))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_notification_for_an_unknown_payment_is_retried_by_the_provider_until_the_payment_exists()
{
    let app = TestApp::spawn_with_payments().await;
    let unknown = notification("payment.succeeded", Uuid::new_v4(), "sbx_x", PRICE_TEXT);
    app.stores_nothing(deliver(&app, &unknown, 0))
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    // The provider confirms a charge before Herald has stored its payment, as
    // happens when the notification overtakes the commit.
    let payment = Uuid::new_v4();
    let opened = Reply::send(
        as_the_shop(app.request(Method::POST, "/sandbox/api/payments"))
            .header("idempotence-key", format!("payment-{payment}"))
            .json(&json!({
                "amount": { "value": PRICE_TEXT, "currency": "RUB" },
                "payment_method_type": "bank_card",
                "description": "a visit",
                "metadata": { "payment_id": payment.to_string() },
            })),
    )
    .await;
    assert_eq!(opened.status, StatusCode::OK, "{}", opened.body);
    let page = opened.body["confirmation_url"].as_str().unwrap();
    assert_eq!(choose(&app, page, "succeed").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events_of(&app, "PaymentSucceeded").await.is_empty());

    let alice = patient();
    let booking = app.booking(alice).await;
    let started = app
        .post(
            "/api/v1/payments",
            alice,
            json!({ "id": payment, "booking_id": booking, "method": "card" }),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    assert_eq!(started.body["confirmation_url"], page);

    let succeeded = &wait_for(&app, "PaymentSucceeded", 1).await[0];
    assert_eq!(succeeded.aggregate_id, payment.to_string());
    let paid = &wait_for(&app, "BookingPaid", 1).await[0];
    assert_eq!(paid.aggregate_id, booking.to_string());
}

#[tokio::test]
async fn a_process_manager_stopped_mid_flow_finishes_exactly_once_after_restart() {
    let mut app = TestApp::spawn_with_payments().await;
    let paying = start_paying(&app).await;
    app.stop_process_manager().await;

    let chosen = choose(&app, paying.page(), "succeed").await;
    assert_eq!(chosen.status, StatusCode::OK);
    wait_for(&app, "PaymentSucceeded", 1).await;
    let cancelled = app
        .post(
            &format!("/api/v1/bookings/{}/cancel", paying.booking),
            paying.patient,
            json!({ "reason": "feeling better" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events_of(&app, "BookingPaid").await.is_empty());

    app.start_process_manager().await;
    wait_for(&app, "PaymentRefunded", 1).await;

    // As if it had crashed before recording any progress: every entry is
    // delivered again, and nothing acts twice.
    app.stop_process_manager().await;
    sqlx::query("UPDATE projection_checkpoints SET position = 0 WHERE projection = $1")
        .bind(commands::process_manager::CHECKPOINT)
        .execute(&app.pool)
        .await
        .unwrap();
    let before = app.event_count().await;
    app.start_process_manager().await;
    eventually(
        "the process manager processed the whole log again",
        || async {
            let head = herald_nats::log::head(&app.pool).await.unwrap();
            let at: i64 = sqlx::query_scalar(
                "SELECT position FROM projection_checkpoints WHERE projection = $1",
            )
            .bind(commands::process_manager::CHECKPOINT)
            .fetch_one(&app.pool)
            .await
            .unwrap();
            head > 0 && at == head && app.event_count().await as i64 == head
        },
    )
    .await;
    assert_eq!(app.event_count().await, before);
    for (event_type, count) in [
        ("BookingPaid", 1),
        ("RefundRequested", 1),
        ("PaymentRefunded", 1),
    ] {
        assert_eq!(
            events_of(&app, event_type).await.len(),
            count,
            "{event_type}"
        );
    }
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM sandbox_refunds")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(refunds, 1);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn a_dead_payment_provider_gives_fast_503s_and_stores_nothing() {
    // A provider that accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", black_hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let policy = Resilience {
        attempt_timeout: Duration::from_millis(300),
        attempts: 2,
        first_backoff: Duration::from_millis(50),
        failure_threshold: 2,
        open_for: Duration::from_secs(60),
    };
    let gateway: Arc<dyn PaymentGateway> = Arc::new(Resilient::new(
        Arc::new(SandboxGateway::new(&address, common::shop()).unwrap()),
        policy,
    ));
    let database = common::fresh_database().await;
    let _leftovers = common::Leftovers::new(Some(database.clone()), None);
    let app = TestApp::spawn_with_gateway(&database, Some(gateway)).await;
    let alice = patient();
    let booking = app.booking(alice).await;
    let pay = post(
        "/api/v1/payments",
        json!({ "booking_id": booking, "method": "card" }),
    );

    let started = Instant::now();
    let reply = app
        .refuses(alice, pay.clone(), StatusCode::SERVICE_UNAVAILABLE)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(reply.body["detail"]
        .as_str()
        .unwrap()
        .contains("payment provider"));

    for _ in 0..3 {
        let started = Instant::now();
        app.refuses(alice, pay.clone(), StatusCode::SERVICE_UNAVAILABLE)
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "with the circuit open, no call waits for the provider: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn payments_racing_for_one_booking_leave_exactly_one_active() {
    let app = TestApp::spawn().await;
    let alice = patient();
    let booking = app.booking(alice).await;
    let pay = post(
        "/api/v1/payments",
        json!({ "booking_id": booking, "method": "card" }),
    );

    let replies = futures::future::join_all((0..8).map(|_| app.call(alice, &pay))).await;

    let created = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{replies:?}");
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        reply.assert_problem(StatusCode::CONFLICT);
        assert_eq!(
            reply.body["detail"],
            "a payment for this booking is already in progress"
        );
    }
    assert_eq!(events_of(&app, "PaymentInitiated").await.len(), 1);
}
