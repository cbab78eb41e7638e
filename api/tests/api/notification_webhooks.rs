//! Webhooks of notifications: admins register them, and every notification
//! of their kind is posted to them, signed, until it is accepted.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, admin, doctor, TestApp};

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
