//! Payment commands: paying for a booking and refunding by hand.
#![allow(clippy::unwrap_used)]

use crate::common;

use chrono::Utc;
use commands::{Metadata, WriteSide};
use common::{admin, auditor, doctor, patient, post, Call, TestApp};
use domain::booking::{Booking, BookingCommand};
use domain::payment::{Payment, PaymentCommand};
use domain::values::{Actor, Currency, Money};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// What `TestApp::booking` charges.
const PRICE: i64 = 150_000;

fn pay(booking: Uuid, method: &str) -> Call {
    post(
        "/api/v1/payments",
        json!({ "booking_id": booking, "method": method }),
    )
}

fn refund(payment: Uuid) -> Call {
    post(
        format!("/api/v1/payments/{payment}/refund"),
        json!({ "reason": " visit did not happen " }),
    )
}

/// A pending booking of `patient`, and an admin.
struct Bill {
    app: TestApp,
    booking: Uuid,
    patient: Actor,
    admin: Actor,
}

async fn booked() -> Bill {
    let app = TestApp::spawn().await;
    let patient = patient();
    let booking = app.booking(patient).await;
    Bill {
        app,
        booking,
        patient,
        admin: admin(),
    }
}

impl Bill {
    /// A payment the patient started for the booking, and its id.
    async fn payment(&self) -> Uuid {
        self.app
            .accepts(self.patient, pay(self.booking, "card"), StatusCode::CREATED)
            .await
            .reply
            .id()
    }

    /// A payment the provider has confirmed, as its notification would, and its id.
    async fn succeeded_payment(&self) -> Uuid {
        let payment = self.payment().await;
        let write = WriteSide::new(self.app.pool.clone());
        let metadata = Metadata::for_request(Actor::system(), "provider-notification");
        let confirmed = PaymentCommand::MarkSucceeded {
            provider_payment_id: self.app.provider_charge(payment).await,
            amount: Money::new(PRICE, Currency::rub()).unwrap(),
            at: Utc::now(),
        };
        write
            .execute::<Payment>(payment, confirmed, &metadata)
            .await
            .unwrap();
        let paid = BookingCommand::MarkPaid {
            payment_id: payment,
            at: Utc::now(),
        };
        write
            .execute::<Booking>(self.booking, paid, &metadata)
            .await
            .unwrap();
        payment
    }
}

#[tokio::test]
async fn the_patient_pays_for_their_booking_at_its_price() {
    let app = TestApp::spawn().await;
    let alice = patient();
    let booking = app
        .accepts(
            alice,
            post(
                "/api/v1/bookings",
                json!({ "call_type": "consultation", "address": "Arbat 5", "amount_minor": 123_456, "currency": "USD" }),
            ),
            StatusCode::CREATED,
        )
        .await
        .reply
        .id();

    let paid = app
        .accepts(alice, pay(booking, "sbp"), StatusCode::CREATED)
        .await;

    let body = &paid.reply.body;
    assert_eq!(body["status"], "pending");
    assert_eq!(body["amount_minor"], 123_456);
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["booking_id"], booking.to_string());
    assert_eq!(body["version"], 1);
    let event = paid.event();
    assert_eq!(event.event_type, "PaymentInitiated");
    assert_eq!(event.aggregate_id, paid.reply.id().to_string());
    assert_eq!(
        event.field("amount"),
        &json!({ "amount_minor": 123_456, "currency": "USD" })
    );
    assert_eq!(event.field("method"), "sbp");
}

#[tokio::test]
async fn a_payment_id_chosen_by_the_client_is_used_and_cannot_be_used_again() {
    let b = booked().await;
    let id = Uuid::new_v4();
    let call = post(
        "/api/v1/payments",
        json!({ "id": id, "booking_id": b.booking, "method": "card" }),
    );

    let paid = b
        .app
        .accepts(b.patient, call.clone(), StatusCode::CREATED)
        .await;
    assert_eq!(paid.reply.id(), id);

    b.app.refuses(b.patient, call, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn only_the_bookings_patient_may_pay_for_it() {
    let b = booked().await;

    for someone in [patient(), doctor(), b.admin, auditor()] {
        b.app
            .refuses(someone, pay(b.booking, "card"), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn paying_for_an_unknown_booking_is_not_found() {
    let app = TestApp::spawn().await;

    app.refuses(
        patient(),
        pay(Uuid::new_v4(), "card"),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn each_invalid_payment_field_is_named_and_nothing_is_stored() {
    let b = booked().await;
    let cases = [
        (
            json!({ "booking_id": b.booking, "method": "cash" }),
            "method",
        ),
        (
            json!({ "booking_id": b.booking, "method": "Card" }),
            "method",
        ),
        (json!({ "booking_id": b.booking }), "method"),
        (json!({ "method": "card" }), "booking_id"),
    ];

    for (body, field) in cases {
        b.app
            .refuses(
                b.patient,
                post("/api/v1/payments", body),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names(field);
    }
}

#[tokio::test]
async fn a_booking_id_that_is_not_a_uuid_is_a_bad_request() {
    let b = booked().await;

    for booking_id in [json!("booking-1"), json!(42)] {
        let body = json!({ "booking_id": booking_id, "method": "card" });
        b.app
            .refuses(
                b.patient,
                post("/api/v1/payments", body),
                StatusCode::BAD_REQUEST,
            )
            .await;
    }
}

#[tokio::test]
async fn a_cancelled_booking_cannot_be_paid_for() {
    let b = booked().await;
    let cancel = post(
        format!("/api/v1/bookings/{}/cancel", b.booking),
        json!({ "reason": "changed my mind" }),
    );
    b.app.accepts(b.patient, cancel, StatusCode::OK).await;

    b.app
        .refuses(b.patient, pay(b.booking, "card"), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn a_paid_booking_cannot_be_paid_for_again() {
    let b = booked().await;
    b.succeeded_payment().await;

    b.app
        .refuses(b.patient, pay(b.booking, "sbp"), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn an_admin_requests_a_refund_of_a_succeeded_payment() {
    let b = booked().await;
    let payment = b.succeeded_payment().await;

    let refunded = b
        .app
        .accepts(b.admin, refund(payment), StatusCode::OK)
        .await;

    assert_eq!(refunded.reply.id(), payment);
    assert_eq!(refunded.reply.body["status"], "refund_pending");
    let event = refunded.event();
    assert_eq!(event.event_type, "RefundRequested");
    assert_eq!(event.aggregate_id, payment.to_string());
    assert_eq!(event.field("reason"), "visit did not happen");
    assert_eq!(event.field("requested_by"), &json!(b.admin.user_id));
}

#[tokio::test]
async fn only_admins_may_request_refunds() {
    let b = booked().await;
    let payment = b.succeeded_payment().await;

    for someone in [b.patient, doctor(), auditor()] {
        b.app
            .refuses(someone, refund(payment), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn a_payment_that_has_not_succeeded_cannot_be_refunded() {
    let b = booked().await;
    let pending = b.payment().await;
    b.app
        .refuses(b.admin, refund(pending), StatusCode::CONFLICT)
        .await;

    let b = booked().await;
    let succeeded = b.succeeded_payment().await;
    b.app
        .accepts(b.admin, refund(succeeded), StatusCode::OK)
        .await;
    b.app
        .refuses(b.admin, refund(succeeded), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn refunding_an_unknown_payment_is_not_found() {
    let app = TestApp::spawn().await;

    app.refuses(admin(), refund(Uuid::new_v4()), StatusCode::NOT_FOUND)
        .await;
    app.refuses(
        admin(),
        post(
            "/api/v1/payments/not-a-uuid/refund",
            json!({ "reason": "x" }),
        ),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_refund_needs_a_reason() {
    let b = booked().await;
    let payment = b.succeeded_payment().await;
    let path = format!("/api/v1/payments/{payment}/refund");

    for body in [json!({}), json!({ "reason": " " })] {
        b.app
            .refuses(
                b.admin,
                post(path.clone(), body),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names("reason");
    }
}
