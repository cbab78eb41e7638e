//! Webhooks of notifications: admins register them, and every notification
//! of their kind is posted to them, signed, until it is accepted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::deliveries::Retry;
use api::notify::NotifyConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, admin, doctor, patient, Options, TestApp};
use crate::email::settled;
use crate::notifications::step;

#[tokio::test]
async fn admins_register_list_and_remove_webhooks_and_nobody_else_may() {
    let app = TestApp::spawn().await;
    let boss = admin();
    let registered = app
        .post(
            "/api/v1/notification-webhooks",
            boss,
            json!({ "kind": "booking_assigned", "url": "https://push.example/herald" }),
        )
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    assert_eq!(registered.body["kind"], "booking_assigned");
    assert_eq!(registered.body["delivered"], 0);
    let secret = registered.body["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 64);
    let id = registered.id();

    let listed = app
        .send(Method::GET, "/api/v1/notification-webhooks", boss, None)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["url"], "https://push.example/herald");
    assert!(items[0].get("secret").is_none(), "the secret is shown once");

    for (body, field) in [
        (
            json!({ "kind": "gossip", "url": "https://push.example" }),
            "kind",
        ),
        (
            json!({ "kind": "booking_assigned", "url": "ftp://push.example" }),
            "url",
        ),
        (
            json!({ "kind": "booking_assigned", "url": "/relative" }),
            "url",
        ),
        (
            json!({ "kind": "booking_assigned", "url": "http://127.0.0.1:8080/hook" }),
            "url",
        ),
        (
            json!({ "kind": "booking_assigned", "url": "http://169.254.169.254/latest/meta-data" }),
            "url",
        ),
        (
            json!({ "kind": "booking_assigned", "url": "http://[::ffff:10.0.0.1]/hook" }),
            "url",
        ),
        (
            json!({ "kind": "booking_assigned", "url": "http://localhost/hook" }),
            "url",
        ),
        (json!({ "kind": "booking_assigned" }), "url"),
    ] {
        app.post("/api/v1/notification-webhooks", boss, body)
            .await
            .assert_names(field);
    }
    let stranger = doctor();
    app.post(
        "/api/v1/notification-webhooks",
        stranger,
        json!({ "kind": "booking_assigned", "url": "https://evil.example" }),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN);
    app.send(Method::GET, "/api/v1/notification-webhooks", stranger, None)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.call(
        stranger,
        &common::delete(format!("/api/v1/notification-webhooks/{id}")),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN);

    let removed = app
        .call(
            boss,
            &common::delete(format!("/api/v1/notification-webhooks/{id}")),
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    app.call(
        boss,
        &common::delete(format!("/api/v1/notification-webhooks/{id}")),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
}

/// What a receiver of webhooks was sent: each attempt's body, whether its
/// signature held, and the status it was answered.
#[derive(Debug, Clone)]
struct Attempt {
    body: serde_json::Value,
    signed: bool,
    notification: String,
    answered: u16,
}

/// A receiver of webhooks on a port of its own, checking every signature
/// with `secret`, that answers 500 to the first `failures` attempts and 200
/// after.
struct Receiver {
    url: String,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

impl Receiver {
    async fn start(failures: usize, secret: Arc<Mutex<String>>) -> Self {
        let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
        let seen = attempts.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let seen = seen.clone();
                    let secret = secret.clone();
                    async move {
                        let key = secret.lock().unwrap().clone();
                        let signed = api::provider::webhook::WebhookSecret::new(key.into())
                            .unwrap()
                            .verify(
                                headers
                                    .get("x-herald-signature")
                                    .and_then(|v| v.to_str().ok()),
                                &body,
                                chrono::Utc::now().timestamp(),
                            )
                            .is_ok();
                        let mut seen = seen.lock().unwrap();
                        let answered = if seen.len() < failures { 500 } else { 200 };
                        seen.push(Attempt {
                            body: serde_json::from_slice(&body).unwrap(),
                            signed,
                            notification: headers["x-herald-notification"]
                                .to_str()
                                .unwrap()
                                .to_owned(),
                            answered,
                        });
                        axum::http::StatusCode::from_u16(answered).unwrap()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, attempts }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_webhook_that_fails_twice_gets_each_notification_of_its_kind_signed_on_the_third_attempt()
{
    let notify = NotifyConfig {
        webhook_retry: Retry {
            attempts: 5,
            first_pause: Duration::from_millis(200),
            max_pause: Duration::from_millis(400),
        },
        // The receiver listens on the loopback address.
        webhook_private_addresses: true,
        ..NotifyConfig::default()
    };
    let mut app = TestApp::spawn_with(Options {
        notify: Some(notify),
        ..Options::default()
    })
    .await;
    app.start_pipeline().await;
    app.start_webhooks().await;
    let secret = Arc::new(Mutex::new(String::new()));
    let receiver = Receiver::start(2, secret.clone()).await;
    let boss = app.enroll(admin()).await;
    let registered = app
        .post(
            "/api/v1/notification-webhooks",
            boss,
            json!({ "kind": "booking_assigned", "url": receiver.url }),
        )
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    *secret.lock().unwrap() = registered.body["secret"].as_str().unwrap().to_owned();

    // A new booking is not of the webhook's kind; its assignment is.
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;
    let booking = app.booking(alice).await;
    step(
        &app,
        doctor,
        booking,
        "assign",
        json!({ "doctor_id": doctor.user_id }),
    )
    .await;

    let queued = settled(&app, "webhook").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(queued[0].sent, "{queued:?}");
    assert_eq!(queued[0].attempts, 3);
    assert_eq!(queued[0].target, registered.id());
    let attempts = receiver.attempts();
    let answered: Vec<u16> = attempts.iter().map(|a| a.answered).collect();
    assert_eq!(answered, [500, 500, 200]);
    for attempt in &attempts {
        assert!(attempt.signed, "{attempt:?}");
        assert_eq!(
            attempt.body, attempts[0].body,
            "every attempt posts the same"
        );
        assert_eq!(attempt.notification, queued[0].notification_id.to_string());
    }
    let posted = &attempts[0].body;
    assert_eq!(posted["kind"], "booking_assigned");
    assert_eq!(posted["booking_id"], booking.to_string());
    assert_eq!(posted["user_id"], alice.user_id.to_string());
    assert_eq!(posted["summary"], "A doctor was assigned to your visit");
    assert!(
        !posted.to_string().contains("Tverskaya"),
        "no address: {posted}"
    );

    let listed = app
        .send(Method::GET, "/api/v1/notification-webhooks", boss, None)
        .await;
    let hook = &listed.body["items"][0];
    assert_eq!(
        (
            &hook["delivered"],
            &hook["failed"],
            &hook["last_status"],
            &hook["last_error"]
        ),
        (&json!(1), &json!(0), &json!(200), &json!(null)),
        "{hook}"
    );
    // Nothing is posted again once accepted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.attempts().len(), 3);
}
