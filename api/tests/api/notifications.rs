//! Notifications: who hears of what, the read marker, settings, and that
//! the feed is a read model a rebuild gives again.

use std::collections::BTreeSet;

use domain::values::Actor;
use projections::Projection;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::{self, admin, auditor, doctor, patient, TestApp};
use crate::payment_flow::{choose, wait_for};

/// `actor`'s feed once every projection is up to date, as (kind, subject id)
/// pairs, newest first.
async fn feed(app: &TestApp, actor: Actor, query: &str) -> Vec<(String, String)> {
    app.wait_for_projections().await;
    let reply = app
        .send(
            Method::GET,
            &format!("/api/v1/notifications{query}"),
            actor,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    items(&reply.body)
        .iter()
        .map(|item| {
            let subject = ["booking_id", "payment_id", "chat_id"]
                .iter()
                .find_map(|field| item[field].as_str())
                .unwrap_or_default();
            (
                item["kind"].as_str().unwrap().to_owned(),
                subject.to_owned(),
            )
        })
        .collect()
}

fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().unwrap()
}

fn notice(kind: &str, subject: Uuid) -> (String, String) {
    (kind.to_owned(), subject.to_string())
}

/// `GET /me` as `actor`, once every projection is up to date.
async fn unread(app: &TestApp, actor: Actor) -> i64 {
    app.wait_for_projections().await;
    let me = app.send(Method::GET, "/api/v1/me", actor, None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    me.body["unread_notifications"].as_i64().unwrap()
}

/// `actor` takes `step` (assign, complete, cancel) on `booking`; it must
/// answer 200.
pub(crate) async fn step(app: &TestApp, actor: Actor, booking: Uuid, step: &str, body: Value) {
    let reply = app
        .post(&format!("/api/v1/bookings/{booking}/{step}"), actor, body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{step}: {}", reply.body);
}

/// A payment `patient` starts for `booking`, and its confirmation page.
async fn pay(app: &TestApp, patient: Actor, booking: Uuid) -> (Uuid, String) {
    let reply = app
        .post(
            "/api/v1/payments",
            patient,
            json!({ "booking_id": booking, "method": "card" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let page = reply.body["confirmation_url"].as_str().unwrap().to_owned();
    (reply.id(), page)
}

#[tokio::test]
async fn bookings_and_payments_notify_the_people_they_concern_and_never_the_one_who_acted() {
    let app = TestApp::spawn_with_payments().await;
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;
    let admin = app.enroll(admin()).await;
    let auditor = app.enroll(auditor()).await;

    // Assigned by an admin and completed by the doctor.
    let visit = app.booking(alice).await;
    step(
        &app,
        admin,
        visit,
        "assign",
        json!({ "doctor_id": doctor.user_id }),
    )
    .await;
    step(&app, doctor, visit, "complete", json!({})).await;
    // Taken by the doctor, then cancelled by the patient.
    let called_off = app.booking(alice).await;
    step(
        &app,
        doctor,
        called_off,
        "assign",
        json!({ "doctor_id": doctor.user_id }),
    )
    .await;
    step(
        &app,
        alice,
        called_off,
        "cancel",
        json!({ "reason": "feeling better" }),
    )
    .await;
    // Paid once in vain and once for real, then cancelled by an admin, and
    // so refunded.
    let paid = app.booking(alice).await;
    let (declined, page) = pay(&app, alice, paid).await;
    choose(&app, &page, "fail").await;
    wait_for(&app, "PaymentFailed", 1).await;
    let (settled, page) = pay(&app, alice, paid).await;
    choose(&app, &page, "succeed").await;
    wait_for(&app, "BookingPaid", 1).await;
    step(
        &app,
        admin,
        paid,
        "cancel",
        json!({ "reason": "no doctor free" }),
    )
    .await;
    wait_for(&app, "PaymentRefunded", 1).await;

    assert_eq!(
        feed(&app, alice, "").await,
        [
            notice("payment_refunded", settled),
            notice("booking_cancelled", paid),
            notice("payment_succeeded", settled),
            notice("payment_failed", declined),
            notice("booking_assigned", called_off),
            notice("booking_completed", visit),
            notice("booking_assigned", visit),
        ]
    );
    assert_eq!(
        feed(&app, doctor, "").await,
        [
            notice("booking_requested", paid),
            notice("booking_cancelled", called_off),
            notice("booking_requested", called_off),
            notice("booking_requested", visit),
        ]
    );
    assert_eq!(
        feed(&app, admin, "").await,
        [
            notice("booking_requested", paid),
            notice("booking_requested", called_off),
            notice("booking_requested", visit),
        ]
    );
    assert_eq!(feed(&app, auditor, "").await, []);

    common::assert_matches_rebuild(&app.pool, Projection::Notifications).await;
}

#[tokio::test]
async fn the_read_marker_counts_what_is_left_unread_and_new_bookings_reach_only_later_staff() {
    let app = TestApp::spawn_with_pipeline().await;
    let alice = app.enroll(patient()).await;
    let early = app.enroll(doctor()).await;
    let first = app.booking(alice).await;
    let late = app.enroll(doctor()).await;
    let bookings = [first, app.booking(alice).await, app.booking(alice).await];
    for booking in bookings {
        step(
            &app,
            early,
            booking,
            "assign",
            json!({ "doctor_id": early.user_id }),
        )
        .await;
    }
    assert_eq!(unread(&app, alice).await, 3);
    assert_eq!(unread(&app, early).await, 3);
    // Nobody hears of a booking made before they joined.
    assert_eq!(unread(&app, late).await, 2);

    // Reading up to the second leaves the newest unread.
    let page = app
        .send(Method::GET, "/api/v1/notifications", alice, None)
        .await;
    let seqs: Vec<i64> = items(&page.body)
        .iter()
        .map(|n| n["seq"].as_i64().unwrap())
        .collect();
    let read = app
        .post(
            "/api/v1/notifications/read",
            alice,
            json!({ "up_to": seqs[1] }),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(unread(&app, alice).await, 1);
    assert_eq!(
        feed(&app, alice, "?unread=true").await,
        [notice("booking_assigned", bookings[2])]
    );
    let page = app
        .send(Method::GET, "/api/v1/notifications", alice, None)
        .await;
    let flags: Vec<bool> = items(&page.body)
        .iter()
        .map(|n| n["read"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [false, true, true]);
    // A marker does not go back, and a marker past everything stops at the
    // newest: what comes later is unread.
    let back = app
        .post(
            "/api/v1/notifications/read",
            alice,
            json!({ "up_to": seqs[2] }),
        )
        .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(unread(&app, alice).await, 1);
    for up_to in [json!(0), json!("soon")] {
        let refused = app
            .stores_nothing(app.post(
                "/api/v1/notifications/read",
                alice,
                json!({ "up_to": up_to }),
            ))
            .await;
        assert!(
            refused.status.is_client_error(),
            "{up_to}: {}",
            refused.status
        );
    }
    let ahead = app
        .post(
            "/api/v1/notifications/read",
            alice,
            json!({ "up_to": i64::MAX }),
        )
        .await;
    assert_eq!(ahead.status, StatusCode::OK, "{}", ahead.body);
    assert_eq!(unread(&app, alice).await, 0);
    let later = app.booking(alice).await;
    step(
        &app,
        early,
        later,
        "assign",
        json!({ "doctor_id": early.user_id }),
    )
    .await;
    assert_eq!(unread(&app, alice).await, 1);

    // The staff's marker covers new bookings too.
    let newest = app
        .send(Method::GET, "/api/v1/notifications?limit=1", late, None)
        .await;
    let seq = items(&newest.body)[0]["seq"].as_i64().unwrap();
    let read = app
        .post("/api/v1/notifications/read", late, json!({ "up_to": seq }))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(unread(&app, late).await, 0);
    app.booking(alice).await;
    assert_eq!(unread(&app, late).await, 1);

    common::assert_matches_rebuild(&app.pool, Projection::Notifications).await;
}

#[tokio::test]
async fn pages_of_the_feed_follow_one_another_without_gaps() {
    let app = TestApp::spawn_with_pipeline().await;
    let alice = app.enroll(patient()).await;
    let admin = app.enroll(admin()).await;
    let mut expected = Vec::new();
    for _ in 0..5 {
        expected.push(notice("booking_requested", app.booking(alice).await));
    }
    expected.reverse();
    app.wait_for_projections().await;
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = app
            .send(
                Method::GET,
                &format!("/api/v1/notifications{query}"),
                admin,
                None,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for item in items(&page.body) {
            seen.push(notice(
                item["kind"].as_str().unwrap(),
                item["booking_id"].as_str().unwrap().parse().unwrap(),
            ));
        }
        match page.body["next_cursor"].as_i64() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_person_switches_kinds_off_in_the_app_and_bad_switches_are_refused() {
    let app = TestApp::spawn_with_pipeline().await;
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;
    let settings = app
        .send(Method::GET, "/api/v1/me/notifications", doctor, None)
        .await;
    assert_eq!(settings.status, StatusCode::OK, "{}", settings.body);
    assert_eq!(settings.body["feed"]["booking_requested"], true);
    assert_eq!(settings.body["email"]["booking_requested"], false);
    assert_eq!(settings.body["email"]["booking_cancelled"], true);

    let chat = Uuid::new_v4();
    let changed = app
        .call(
            doctor,
            &common::patch(
                "/api/v1/me/notifications",
                json!({ "feed": { "booking_requested": false },
                        "email": { "booking_requested": true },
                        "muted_chats": { chat.to_string(): true } }),
            ),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    app.booking(alice).await;
    assert_eq!(feed(&app, doctor, "").await, []);
    let settings = app
        .send(Method::GET, "/api/v1/me/notifications", doctor, None)
        .await;
    assert_eq!(settings.body["feed"]["booking_requested"], false);
    assert_eq!(settings.body["email"]["booking_requested"], true);
    assert_eq!(settings.body["muted_chats"], json!([chat]));

    for (body, field) in [
        (json!({ "feed": { "gossip": false } }), "feed.gossip"),
        (json!({ "email": { "booking_assigned": "yes" } }), ""),
        (
            json!({ "muted_chats": { "general": true } }),
            "muted_chats.general",
        ),
        (json!({ "sms": {} }), ""),
    ] {
        let refused = app
            .stores_nothing(app.call(
                doctor,
                &common::patch("/api/v1/me/notifications", body.clone()),
            ))
            .await;
        assert!(
            refused.status.is_client_error(),
            "{body}: {}",
            refused.status
        );
        if !field.is_empty() {
            refused.assert_names(field);
        }
    }
    let kinds: BTreeSet<String> = settings.body["feed"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(kinds.len(), domain::values::NotificationKind::ALL.len());
}

/// Herald with the whole pipeline and reminders of messages unread for
/// `after`.
pub(crate) async fn spawn_reminding(after: std::time::Duration) -> TestApp {
    let notify = api::notify::NotifyConfig {
        unread_after: after,
        ..Default::default()
    };
    let mut app = TestApp::spawn_with(common::Options {
        notify: Some(notify),
        ..Default::default()
    })
    .await;
    app.start_pipeline().await;
    app.start_process_manager().await;
    app
}

/// The `messages` of `actor`'s chat notifications, newest first.
async fn chat_notices(app: &TestApp, actor: Actor) -> Vec<(String, i64)> {
    app.wait_for_projections().await;
    let page = app
        .send(Method::GET, "/api/v1/notifications", actor, None)
        .await;
    items(&page.body)
        .iter()
        .map(|item| {
            assert_eq!(item["kind"], "chat_messages", "{item}");
            (
                item["chat_id"].as_str().unwrap().to_owned(),
                item["messages"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn messages_left_unread_are_gathered_into_one_notification_and_read_or_muted_ones_into_none()
{
    let after = std::time::Duration::from_millis(500);
    let mut app = spawn_reminding(after).await;
    let alice = app.enroll(patient()).await;
    let (doctor, bob) = (doctor(), patient());
    let chat = app.group_chat(alice, &[doctor, bob]).await;
    let chat_id = chat.to_string();

    // Three messages: Bob reads them at once, the doctor does not, and
    // their author is never reminded of her own. The reminders are away
    // until all three have waited long enough, however slowly they were
    // sent, so that one reminder is due for them all.
    app.stop_process_manager().await;
    for body in ["one", "two", "three"] {
        assert_eq!(
            app.message(chat, alice, body).await.status,
            StatusCode::CREATED
        );
    }
    let read = app
        .post(
            &format!("/api/v1/chats/{chat}/read"),
            bob,
            json!({ "up_to_seq": 3 }),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    tokio::time::sleep(after * 2).await;
    app.start_process_manager().await;
    wait_for(&app, "UnreadReminded", 1).await;
    assert_eq!(chat_notices(&app, doctor).await, [(chat_id.clone(), 3)]);
    assert_eq!(chat_notices(&app, bob).await, []);
    assert_eq!(chat_notices(&app, alice).await, []);

    // The doctor answers; Bob has muted the chat meanwhile, so only Alice
    // hears of it.
    let muted = app
        .call(
            bob,
            &common::patch(
                "/api/v1/me/notifications",
                json!({ "muted_chats": { chat_id.clone(): true } }),
            ),
        )
        .await;
    assert_eq!(muted.status, StatusCode::OK, "{}", muted.body);
    assert_eq!(
        app.message(chat, doctor, "four").await.status,
        StatusCode::CREATED
    );
    wait_for(&app, "UnreadReminded", 2).await;
    assert_eq!(chat_notices(&app, alice).await, [(chat_id.clone(), 1)]);
    assert_eq!(chat_notices(&app, bob).await, []);
    assert_eq!(chat_notices(&app, doctor).await, [(chat_id.clone(), 3)]);

    common::assert_matches_rebuild(&app.pool, Projection::Notifications).await;
}
