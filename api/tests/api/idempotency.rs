//! `Idempotency-Key`: the same request once, whatever the timing.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{patient, Reply, TestApp};
use domain::values::Actor;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn book_with_key(app: &TestApp, actor: Actor, key: &str, body: &Value) -> Reply {
    let response = app
        .client
        .post(format!("{}/api/v1/bookings", app.address))
        .bearer_auth(app.token(actor))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    Reply::from(response).await
}

fn visit() -> Value {
    json!({ "call_type": "consultation", "address": "Nevsky 10, St Petersburg", "amount_minor": 99000 })
}

#[tokio::test]
async fn the_same_key_and_body_replays_the_first_answer_and_stores_nothing_new() {
    let app = TestApp::spawn().await;
    let alice = patient();

    let first = book_with_key(&app, alice, "key-1", &visit()).await;
    let again = book_with_key(&app, alice, "key-1", &visit()).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(first.body, again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn identical_requests_racing_with_one_key_store_one_booking() {
    let app = TestApp::spawn().await;
    let alice = patient();

    let body = visit();
    let replies = join_all((0..16).map(|_| book_with_key(&app, alice, "racing-key", &body))).await;

    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        assert_eq!(reply.body, replies[0].body);
    }
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_conflict_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let alice = patient();
    book_with_key(&app, alice, "key-2", &visit()).await;

    let mut other = visit();
    other["amount_minor"] = json!(120000);
    let reply = book_with_key(&app, alice, "key-2", &other).await;

    reply.assert_problem(StatusCode::CONFLICT);
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn keys_belong_to_their_caller() {
    let app = TestApp::spawn().await;

    let alices = book_with_key(&app, patient(), "shared-key", &visit()).await;
    let bobs = book_with_key(&app, patient(), "shared-key", &visit()).await;

    assert_eq!(bobs.status, StatusCode::CREATED);
    assert_ne!(alices.body["id"], bobs.body["id"]);
    assert_eq!(app.event_count().await, 2);
}

#[tokio::test]
async fn the_same_json_formatted_another_way_is_the_same_request() {
    let app = TestApp::spawn().await;
    let alice = patient();
    let send = |body: &'static str| {
        app.client
            .post(format!("{}/api/v1/bookings", app.address))
            .bearer_auth(app.token(alice))
            .header("Idempotency-Key", "formatted")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let first = Reply::from(
        send(r#"{"call_type":"urgent","address":"Arbat 5","amount_minor":700}"#)
            .await
            .unwrap(),
    )
    .await;
    let reformatted = Reply::from(
        send("{\n  \"amount_minor\": 700,\n  \"address\": \"Arbat 5\",\n  \"call_type\": \"urgent\"\n}")
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(
        reformatted.status,
        StatusCode::CREATED,
        "{}",
        reformatted.body
    );
    assert_eq!(reformatted.headers["idempotent-replayed"], "true");
    assert_eq!(reformatted.body, first.body);
    assert_eq!(app.event_count().await, 1);
}
