//! Booking commands: request, assign, complete, cancel — who may, and when.
#![allow(clippy::unwrap_used)]

use crate::common;

use chrono::{Duration, Utc};
use common::{admin, auditor, doctor, patient, post, Call, TestApp};
use domain::values::Actor;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn visit() -> Value {
    json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": 150000 })
}

/// `visit()` with `changes` applied; a `null` change removes the field.
fn visit_with(changes: Value) -> Value {
    let mut body = visit();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value.clone();
        }
    }
    body
}

fn request(body: Value) -> Call {
    post("/api/v1/bookings", body)
}

fn assign(booking: Uuid, doctor: Actor) -> Call {
    post(
        format!("/api/v1/bookings/{booking}/assign"),
        json!({ "doctor_id": doctor.user_id }),
    )
}

fn complete(booking: Uuid) -> Call {
    post(format!("/api/v1/bookings/{booking}/complete"), json!({}))
}

fn cancel(booking: Uuid) -> Call {
    post(
        format!("/api/v1/bookings/{booking}/cancel"),
        json!({ "reason": "  feeling better  " }),
    )
}

fn in_hours(hours: i64) -> String {
    (Utc::now() + Duration::hours(hours)).to_rfc3339()
}

/// A pending booking of `patient` with `doctor` about, and an admin.
struct Visit {
    app: TestApp,
    booking: Uuid,
    patient: Actor,
    doctor: Actor,
    admin: Actor,
}

async fn pending() -> Visit {
    let app = TestApp::spawn().await;
    let patient = patient();
    let booking = app.booking(patient).await;
    let doctor = app.enroll(doctor()).await;
    Visit {
        app,
        booking,
        patient,
        doctor,
        admin: admin(),
    }
}

async fn assigned() -> Visit {
    let visit = pending().await;
    visit
        .accept(visit.doctor, assign(visit.booking, visit.doctor))
        .await;
    visit
}

async fn completed() -> Visit {
    let visit = assigned().await;
    visit.accept(visit.doctor, complete(visit.booking)).await;
    visit
}

async fn cancelled() -> Visit {
    let visit = assigned().await;
    visit.accept(visit.patient, cancel(visit.booking)).await;
    visit
}

impl Visit {
    /// Sends `call` as `actor`; it must succeed with one event on this booking.
    async fn accept(&self, actor: Actor, call: Call) -> common::Outcome {
        let outcome = self.app.accepts(actor, call, StatusCode::OK).await;
        assert_eq!(outcome.event().aggregate_id, self.booking.to_string());
        assert_eq!(outcome.reply.id(), self.booking);
        outcome
    }
}

#[tokio::test]
async fn a_patient_requests_a_visit_that_starts_pending() {
    let app = TestApp::spawn().await;
    let alice = patient();

    let requested = app
        .accepts(
            alice,
            request(visit_with(json!({ "address": "  Tverskaya 1, Moscow \n" }))),
            StatusCode::CREATED,
        )
        .await;

    assert_eq!(requested.reply.body["status"], "pending");
    assert_eq!(requested.reply.body["version"], 1);
    let event = requested.event();
    assert_eq!(event.event_type, "BookingRequested");
    assert_eq!(event.aggregate_id, requested.reply.id().to_string());
    assert_eq!(event.field("patient_id"), &json!(alice.user_id));
    assert_eq!(event.field("address"), "Tverskaya 1, Moscow");
    assert_eq!(
        event.field("price"),
        &json!({ "amount_minor": 150000, "currency": "RUB" })
    );
}

#[tokio::test]
async fn a_scheduled_visit_in_the_future_with_its_own_id_and_currency_is_accepted() {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    let when = in_hours(24);

    let requested = app
        .accepts(
            patient(),
            request(visit_with(json!({
                "id": id, "call_type": "scheduled", "scheduled_at": when, "currency": "USD"
            }))),
            StatusCode::CREATED,
        )
        .await;

    assert_eq!(requested.reply.id(), id);
    assert_eq!(requested.event().field("price")["currency"], "USD");
    assert!(requested.event().field("scheduled_at").is_string());
}

#[tokio::test]
async fn a_booking_id_chosen_by_the_client_cannot_be_used_twice() {
    let app = TestApp::spawn().await;
    let body = visit_with(json!({ "id": Uuid::new_v4() }));
    app.accepts(patient(), request(body.clone()), StatusCode::CREATED)
        .await;

    app.refuses(patient(), request(body), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn only_patients_may_request_visits() {
    let app = TestApp::spawn().await;

    for someone in [doctor(), admin(), auditor()] {
        app.refuses(someone, request(visit()), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn each_invalid_booking_field_is_named_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({ "call_type": "scheduled" }), "scheduled_at"),
        (
            json!({ "call_type": "scheduled", "scheduled_at": in_hours(-1) }),
            "scheduled_at",
        ),
        (json!({ "scheduled_at": in_hours(-1) }), "scheduled_at"),
        (json!({ "amount_minor": 0 }), "amount_minor"),
        (json!({ "amount_minor": -100 }), "amount_minor"),
        (
            json!({ "amount_minor": 1_000_000_000_001_i64 }),
            "amount_minor",
        ),
        (json!({ "amount_minor": null }), "amount_minor"),
        (json!({ "address": "" }), "address"),
        (json!({ "address": " \n\t " }), "address"),
        (json!({ "address": "a".repeat(501) }), "address"),
        (json!({ "address": null }), "address"),
        (json!({ "call_type": "later" }), "call_type"),
        (json!({ "call_type": "URGENT" }), "call_type"),
        (json!({ "call_type": null }), "call_type"),
        (json!({ "currency": "rub" }), "currency"),
        (json!({ "currency": "RUBL" }), "currency"),
    ];

    for (changes, field) in cases {
        let body = visit_with(changes);
        app.refuses(patient(), request(body), StatusCode::UNPROCESSABLE_ENTITY)
            .await
            .assert_names(field);
    }
}

#[tokio::test]
async fn an_address_may_have_500_characters() {
    let app = TestApp::spawn().await;

    app.accepts(
        patient(),
        request(visit_with(json!({ "address": "я".repeat(500) }))),
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test]
async fn every_invalid_booking_field_is_named_at_once() {
    let app = TestApp::spawn().await;
    let body = json!({ "call_type": "later", "address": "", "amount_minor": 0, "currency": "rub" });

    let reply = app
        .refuses(patient(), request(body), StatusCode::UNPROCESSABLE_ENTITY)
        .await;

    let mut fields = reply.invalid_fields();
    fields.sort();
    assert_eq!(
        fields,
        ["address", "amount_minor", "call_type", "currency"],
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn an_amount_that_is_not_a_json_integer_is_a_bad_request() {
    let app = TestApp::spawn().await;

    for amount in [json!(1500.5), json!(150000.0), json!("150000"), json!(true)] {
        let body = visit_with(json!({ "amount_minor": amount }));
        app.refuses(patient(), request(body), StatusCode::BAD_REQUEST)
            .await;
    }
}

#[tokio::test]
async fn an_admin_assigns_any_doctor() {
    let v = pending().await;

    let assigned = v.accept(v.admin, assign(v.booking, v.doctor)).await;

    assert_eq!(assigned.reply.body["status"], "assigned");
    assert_eq!(assigned.event().event_type, "DoctorAssigned");
    assert_eq!(
        assigned.event().field("doctor_id"),
        &json!(v.doctor.user_id)
    );
    assert_eq!(
        assigned.event().field("assigned_by"),
        &json!(v.admin.user_id)
    );
}

#[tokio::test]
async fn a_visit_is_assigned_only_to_an_active_doctor() {
    let v = pending().await;
    let deactivated = v.app.enroll(doctor()).await;
    v.app
        .accepts(
            v.admin,
            post(
                format!("/api/v1/users/{}/deactivate", deactivated.user_id),
                json!({}),
            ),
            StatusCode::OK,
        )
        .await;
    let not_doctors = [
        v.patient,
        v.app.enroll(patient()).await,
        v.app.enroll(admin()).await,
        doctor(),
        deactivated,
    ];

    for someone in not_doctors {
        v.app
            .refuses(
                v.admin,
                assign(v.booking, someone),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names("doctor_id");
    }
    v.app
        .refuses(
            deactivated,
            assign(v.booking, deactivated),
            StatusCode::UNAUTHORIZED,
        )
        .await;
}

#[tokio::test]
async fn a_doctor_assigns_themself() {
    let v = pending().await;

    let assigned = v.accept(v.doctor, assign(v.booking, v.doctor)).await;

    assert_eq!(assigned.reply.body["status"], "assigned");
    assert_eq!(assigned.reply.body["version"], 2);
}

#[tokio::test]
async fn a_doctor_may_not_assign_another_doctor() {
    let v = pending().await;

    v.app
        .refuses(v.doctor, assign(v.booking, doctor()), StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn patients_and_auditors_may_not_assign_doctors() {
    let v = pending().await;

    for someone in [v.patient, patient(), auditor()] {
        v.app
            .refuses(someone, assign(v.booking, v.doctor), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn assigning_needs_a_doctor_id() {
    let v = pending().await;
    let call = post(format!("/api/v1/bookings/{}/assign", v.booking), json!({}));

    v.app
        .refuses(v.admin, call, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("doctor_id");
}

#[tokio::test]
async fn a_booking_that_is_no_longer_pending_cannot_be_assigned() {
    for v in [assigned().await, completed().await, cancelled().await] {
        v.app
            .refuses(v.admin, assign(v.booking, doctor()), StatusCode::CONFLICT)
            .await;
        v.app
            .refuses(v.doctor, assign(v.booking, v.doctor), StatusCode::CONFLICT)
            .await;
    }
}

#[tokio::test]
async fn the_assigned_doctor_completes_the_visit() {
    let v = assigned().await;

    let completed = v.accept(v.doctor, complete(v.booking)).await;

    assert_eq!(completed.reply.body["status"], "completed");
    assert_eq!(completed.event().event_type, "BookingCompleted");
}

#[tokio::test]
async fn only_the_assigned_doctor_may_complete_the_visit() {
    let v = assigned().await;

    for someone in [doctor(), v.admin, v.patient, auditor()] {
        v.app
            .refuses(someone, complete(v.booking), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn a_visit_that_is_pending_cancelled_or_completed_cannot_be_completed() {
    let v = pending().await;
    v.app
        .refuses(v.doctor, complete(v.booking), StatusCode::CONFLICT)
        .await;

    for v in [cancelled().await, completed().await] {
        v.app
            .refuses(v.doctor, complete(v.booking), StatusCode::CONFLICT)
            .await;
    }
}

#[tokio::test]
async fn the_patient_cancels_their_visit() {
    let v = pending().await;

    let cancelled = v.accept(v.patient, cancel(v.booking)).await;

    assert_eq!(cancelled.reply.body["status"], "cancelled");
    assert_eq!(cancelled.event().event_type, "BookingCancelled");
    assert_eq!(cancelled.event().field("reason"), "feeling better");
    assert_eq!(
        cancelled.event().field("cancelled_by"),
        &json!(v.patient.user_id)
    );
}

#[tokio::test]
async fn an_admin_cancels_an_assigned_visit() {
    let v = assigned().await;

    let cancelled = v.accept(v.admin, cancel(v.booking)).await;

    assert_eq!(cancelled.reply.body["status"], "cancelled");
}

#[tokio::test]
async fn another_patient_or_the_doctor_may_not_cancel_a_visit() {
    let v = assigned().await;

    for someone in [patient(), v.doctor, auditor()] {
        v.app
            .refuses(someone, cancel(v.booking), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn a_cancellation_needs_a_reason() {
    let v = pending().await;
    let path = format!("/api/v1/bookings/{}/cancel", v.booking);

    for body in [
        json!({}),
        json!({ "reason": "   " }),
        json!({ "reason": "r".repeat(501) }),
    ] {
        v.app
            .refuses(
                v.patient,
                post(path.clone(), body),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names("reason");
    }
}

#[tokio::test]
async fn a_completed_or_cancelled_visit_cannot_be_cancelled() {
    for v in [completed().await, cancelled().await] {
        v.app
            .refuses(v.patient, cancel(v.booking), StatusCode::CONFLICT)
            .await;
        v.app
            .refuses(v.admin, cancel(v.booking), StatusCode::CONFLICT)
            .await;
    }
}

#[tokio::test]
async fn every_command_on_an_unknown_booking_is_not_found() {
    let app = TestApp::spawn().await;
    let doctor = doctor();

    let unknown = Uuid::new_v4();
    for (actor, call) in [
        (doctor, assign(unknown, doctor)),
        (doctor, complete(unknown)),
        (admin(), cancel(unknown)),
    ] {
        app.refuses(actor, call, StatusCode::NOT_FOUND).await;
    }
    for action in ["assign", "complete", "cancel"] {
        let call = post(format!("/api/v1/bookings/not-a-uuid/{action}"), json!({}));
        app.refuses(admin(), call, StatusCode::NOT_FOUND).await;
    }
}
