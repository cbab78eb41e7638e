//! Postgres going away: 503s, nothing partial, and service again once it is back.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::pg_proxy::PgProxy;
use common::{fresh_database, patient, Leftovers, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn commands_answer_503_while_postgres_is_down_and_succeed_again_when_it_is_back() {
    let direct = fresh_database().await;
    let _leftovers = Leftovers::new(Some(direct.clone()), None);
    let name = direct.rsplit('/').next().unwrap();
    let proxy = PgProxy::start("127.0.0.1:5432").await;
    let app = TestApp::spawn_on(&format!(
        "postgres://postgres@127.0.0.1:{}/{name}",
        proxy.port
    ))
    .await;
    let alice = patient();
    let booking =
        json!({ "call_type": "urgent", "address": "Arbat 5, Moscow", "amount_minor": 50000 });
    assert_eq!(
        app.post("/api/v1/bookings", alice, booking.clone())
            .await
            .status,
        StatusCode::CREATED
    );

    proxy.go_down();
    let started = Instant::now();
    let reply = app.post("/api/v1/bookings", alice, booking.clone()).await;
    reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 503 must come quickly"
    );

    proxy.come_back();
    let reply = app.post("/api/v1/bookings", alice, booking).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(app.event_count().await, 2);
}
