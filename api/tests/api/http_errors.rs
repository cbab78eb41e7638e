//! What every command endpoint answers to requests it cannot take: no or bad
//! credentials, bodies that are not JSON or too large, unknown routes; and the
//! request id that ties an answer to its events.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use api::auth::JwtKeys;
use chrono::Utc;
use common::{admin, delete, patch, patient, post, Call, Reply, TestApp, JWT_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const LIMIT: usize = 64 * 1024;

fn visit() -> Value {
    json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": 150000 })
}

fn request_booking() -> Call {
    post("/api/v1/bookings", visit())
}

/// Every command endpoint, with a body it would accept the shape of. Ids are
/// made up: each request here must be turned away before anything is looked up.
fn every_command() -> Vec<Call> {
    let (chat, message, booking, user) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    vec![
        post(
            "/api/v1/chats",
            json!({ "kind": "group", "members": [user] }),
        ),
        post(
            format!("/api/v1/chats/{chat}/members"),
            json!({ "user_id": user }),
        ),
        delete(format!("/api/v1/chats/{chat}/members/{user}")),
        post(
            format!("/api/v1/chats/{chat}/messages"),
            json!({ "body": "hi" }),
        ),
        patch(
            format!("/api/v1/chats/{chat}/messages/{message}"),
            json!({ "body": "hi" }),
        ),
        delete(format!("/api/v1/chats/{chat}/messages/{message}")),
        post(
            format!("/api/v1/chats/{chat}/read"),
            json!({ "up_to_seq": 1 }),
        ),
        request_booking(),
        post(
            format!("/api/v1/bookings/{booking}/assign"),
            json!({ "doctor_id": user }),
        ),
        post(format!("/api/v1/bookings/{booking}/complete"), json!({})),
        post(
            format!("/api/v1/bookings/{booking}/cancel"),
            json!({ "reason": "ill" }),
        ),
        post(
            "/api/v1/payments",
            json!({ "booking_id": booking, "method": "card" }),
        ),
        post(
            format!("/api/v1/payments/{}/refund", Uuid::new_v4()),
            json!({ "reason": "ill" }),
        ),
    ]
}

/// `call` with `authorization` as its Authorization header, if any.
fn with_authorization(app: &TestApp, call: &Call, authorization: Option<&str>) -> RequestBuilder {
    let request = app
        .request(call.method.clone(), &call.path)
        .json(call.body.as_ref().unwrap_or(&json!({})));
    match authorization {
        Some(value) => request.header(AUTHORIZATION, value),
        None => request,
    }
}

/// `call` as an admin, with `body` sent as `content_type` (or without one).
fn with_body(app: &TestApp, call: &Call, content_type: Option<&str>, body: &str) -> RequestBuilder {
    let request = app
        .request(call.method.clone(), &call.path)
        .bearer_auth(app.token(admin()))
        .body(body.to_owned());
    match content_type {
        Some(value) => request.header(CONTENT_TYPE, value),
        None => request,
    }
}

/// A token with `claims`, signed with the test server's secret by `algorithm`.
fn token_with(claims: &Value, algorithm: Algorithm) -> String {
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(algorithm), claims, &key).unwrap()
}

fn claims(exp_from_now: i64) -> Value {
    json!({ "sub": Uuid::new_v4(), "role": "patient", "exp": Utc::now().timestamp() + exp_from_now })
}

/// Checks a 401 problem that challenges the client to send a bearer token.
fn assert_challenge(reply: &Reply) {
    reply.assert_problem(StatusCode::UNAUTHORIZED);
    let challenge = reply.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

#[tokio::test]
async fn every_command_endpoint_without_a_token_is_unauthorized() {
    let app = TestApp::spawn().await;

    for call in every_command() {
        let reply = app
            .refuses_request(
                with_authorization(&app, &call, None),
                StatusCode::UNAUTHORIZED,
            )
            .await;
        assert_challenge(&reply);
    }
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_unauthorized() {
    let app = TestApp::spawn().await;
    let other = JwtKeys::new(&SecretString::from("o".repeat(32))).unwrap();
    let token = other.mint(patient(), Duration::from_secs(3600));

    let reply = app
        .refuses_request(
            with_authorization(&app, &request_booking(), Some(&format!("Bearer {token}"))),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    assert_challenge(&reply);
}

#[tokio::test]
async fn an_expired_token_is_unauthorized() {
    let app = TestApp::spawn().await;
    let token = token_with(&claims(-60), Algorithm::HS256);

    let reply = app
        .refuses_request(
            with_authorization(&app, &request_booking(), Some(&format!("Bearer {token}"))),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    assert_challenge(&reply);
    assert!(
        reply.body["detail"].as_str().unwrap().contains("expired"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_malformed_authorization_header_or_token_is_unauthorized() {
    let app = TestApp::spawn().await;
    let valid = app.token(patient());
    let mut system = claims(3600);
    system["role"] = json!("system");
    let mut superuser = claims(3600);
    superuser["role"] = json!("superuser");
    let mut nobody = claims(3600);
    nobody["sub"] = json!("alice");
    let headers = [
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        "Bearer".to_owned(),
        "Bearer not-a-jwt".to_owned(),
        format!("Token {valid}"),
        valid.clone(),
        format!("Bearer {valid}x"),
        format!("Bearer {}", token_with(&system, Algorithm::HS256)),
        format!("Bearer {}", token_with(&superuser, Algorithm::HS256)),
        format!("Bearer {}", token_with(&nobody, Algorithm::HS256)),
        format!("Bearer {}", token_with(&claims(3600), Algorithm::HS512)),
    ];

    for header in headers {
        let reply = app
            .refuses_request(
                with_authorization(&app, &request_booking(), Some(&header)),
                StatusCode::UNAUTHORIZED,
            )
            .await;
        assert_challenge(&reply);
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_without_regard_to_case() {
    let app = TestApp::spawn().await;

    for scheme in ["bearer", "BEARER"] {
        let header = format!("{scheme} {}", app.token(patient()));
        let reply = Reply::send(with_authorization(&app, &request_booking(), Some(&header))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
}

#[tokio::test]
async fn every_command_endpoint_refuses_a_body_that_is_not_json() {
    let app = TestApp::spawn().await;

    for call in every_command() {
        for body in ["{\"body\": ", "not json", "{'body': 'hi'}"] {
            app.refuses_request(
                with_body(&app, &call, Some("application/json"), body),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn every_command_endpoint_refuses_json_sent_as_another_content_type() {
    let app = TestApp::spawn().await;

    for call in every_command() {
        let body = call.body.clone().unwrap_or(json!({})).to_string();
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            app.refuses_request(
                with_body(&app, &call, content_type, &body),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn every_command_endpoint_refuses_an_unknown_field_and_names_it() {
    let app = TestApp::spawn().await;

    for call in every_command() {
        let mut body = call.body.clone().unwrap_or(json!({}));
        body["colour"] = json!("red");
        let reply = app
            .refuses_request(
                with_body(&app, &call, Some("application/json"), &body.to_string()),
                StatusCode::BAD_REQUEST,
            )
            .await;
        assert!(
            reply.body["detail"].as_str().unwrap().contains("colour"),
            "{}",
            reply.body
        );
    }
}

#[tokio::test]
async fn json_of_the_wrong_type_is_a_bad_request() {
    let app = TestApp::spawn().await;
    let chat = format!("/api/v1/chats/{}/messages", Uuid::new_v4());
    let cases = [
        (
            "/api/v1/chats",
            json!({ "kind": "group", "members": "bob" }),
        ),
        ("/api/v1/chats", json!({ "kind": 1, "members": [] })),
        ("/api/v1/chats", json!([])),
        ("/api/v1/bookings", json!(null)),
        ("/api/v1/bookings", json!("urgent")),
        (chat.as_str(), json!({ "body": 42 })),
        (chat.as_str(), json!({ "id": "message-1", "body": "hi" })),
    ];

    for (path, body) in cases {
        app.refuses(admin(), post(path, body), StatusCode::BAD_REQUEST)
            .await;
    }
}

#[tokio::test]
async fn a_bad_request_speaks_of_json_not_of_herald_types() {
    let app = TestApp::spawn().await;
    for body in [json!([]), json!("urgent"), json!(null)] {
        let reply = app
            .refuses(
                admin(),
                post("/api/v1/bookings", body),
                StatusCode::BAD_REQUEST,
            )
            .await;
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(detail.contains("expected a JSON object"), "{detail}");
        assert!(!detail.contains("struct"), "{detail}");
    }
}

#[tokio::test]
async fn json_media_types_with_parameters_or_another_case_are_accepted() {
    let app = TestApp::spawn().await;

    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let request = app
            .request(Method::POST, "/api/v1/bookings")
            .bearer_auth(app.token(patient()))
            .header(CONTENT_TYPE, content_type)
            .body(visit().to_string());
        let reply = Reply::send(request).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
}

/// The JSON text of `visit()` padded with whitespace to exactly `size` bytes.
fn visit_of_size(size: usize) -> String {
    let json = visit().to_string();
    format!("{json}{}", " ".repeat(size - json.len()))
}

#[tokio::test]
async fn a_body_of_64_kib_is_read_and_one_byte_more_is_too_large() {
    let app = TestApp::spawn().await;
    let send = |size: usize| {
        app.request(Method::POST, "/api/v1/bookings")
            .bearer_auth(app.token(patient()))
            .header(CONTENT_TYPE, "application/json")
            .body(visit_of_size(size))
    };

    let reply = Reply::send(send(LIMIT)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    app.refuses_request(send(LIMIT + 1), StatusCode::PAYLOAD_TOO_LARGE)
        .await;
}

#[tokio::test]
async fn every_command_endpoint_refuses_a_body_over_64_kib() {
    let app = TestApp::spawn().await;

    for call in every_command() {
        let body = format!("{{\"padding\": \"{}\"}}", "x".repeat(LIMIT));
        app.refuses_request(
            with_body(&app, &call, Some("application/json"), &body),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
    }
}

/// Sends `head` and then `body` in chunks on a raw connection, and reads the
/// answer's status line and body. Writing may fail once the server has answered.
async fn raw_exchange(app: &TestApp, head: &str, body: &[u8]) -> (String, String) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(4096) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn raw_head(app: &TestApp, framing: &str) -> String {
    format!(
        "POST /api/v1/bookings HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n{framing}\r\n\r\n",
        app.token(patient())
    )
}

#[tokio::test]
async fn a_chunked_body_over_64_kib_is_too_large() {
    let app = TestApp::spawn().await;
    let head = raw_head(&app, "Transfer-Encoding: chunked");

    let (status, body) = app
        .stores_nothing(raw_exchange(
            &app,
            &head,
            visit_of_size(LIMIT + 1).as_bytes(),
        ))
        .await;

    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(body.contains("\"status\":413"), "{body}");
}

#[tokio::test]
async fn a_declared_length_over_64_kib_is_refused_without_waiting_for_the_body() {
    let app = TestApp::spawn().await;
    let head = raw_head(&app, "Content-Length: 10000000");

    let (status, _) = app.stores_nothing(raw_exchange(&app, &head, b"")).await;

    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
}

#[tokio::test]
async fn an_unknown_route_is_a_not_found_problem() {
    let app = TestApp::spawn().await;
    let routes = [
        (Method::GET, "/"),
        (Method::GET, "/api/v1/nothing-here"),
        (Method::POST, "/api/v1/chats/a/b/c/d"),
        (Method::POST, "/api/v2/bookings"),
        (Method::POST, "/bookings"),
    ];

    for (method, path) in routes {
        let request = app
            .request(method, path)
            .bearer_auth(app.token(admin()))
            .json(&visit());
        app.refuses_request(request, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn the_request_id_sent_is_echoed_in_the_answer_and_in_a_problem() {
    let app = TestApp::spawn().await;
    let request_id = "client-chosen-id-42";

    let problem = app
        .refuses_request(
            with_authorization(&app, &request_booking(), None).header("x-request-id", request_id),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    assert_eq!(problem.headers["x-request-id"], request_id);
    assert_eq!(problem.body["request_id"], request_id);

    app.accepts(patient(), request_booking(), StatusCode::CREATED)
        .await;
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_recorded_as_the_correlation_id() {
    let app = TestApp::spawn().await;
    let alice = patient();
    let before = app.last_event_id().await;

    let reply = app.call(alice, &request_booking()).await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let generated = reply.headers["x-request-id"].to_str().unwrap();
    assert!(generated.parse::<Uuid>().is_ok(), "{generated}");
    let events = app.events_after(before).await;
    assert_eq!(events.len(), 1);
    events[0].assert_caused_by(alice, generated);
}

#[tokio::test]
async fn an_overlong_request_id_is_replaced_by_a_generated_one() {
    let app = TestApp::spawn().await;
    let overlong = "r".repeat(129);

    let reply = Reply::send(
        app.request_as(patient(), &request_booking())
            .header("x-request-id", &overlong),
    )
    .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let echoed = reply.headers["x-request-id"].to_str().unwrap();
    assert!(echoed.parse::<Uuid>().is_ok(), "{echoed}");
}

#[tokio::test]
async fn an_idempotency_key_must_have_1_to_255_characters() {
    let app = TestApp::spawn().await;
    let with_key = |key: &str| {
        app.request_as(patient(), &request_booking())
            .header("idempotency-key", key)
    };

    for key in [String::new(), "k".repeat(256)] {
        app.refuses_request(with_key(&key), StatusCode::BAD_REQUEST)
            .await;
    }
    let reply = Reply::send(with_key(&"k".repeat(255))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

#[tokio::test]
async fn a_known_route_with_another_method_is_a_method_not_allowed_problem() {
    let app = TestApp::spawn().await;
    let request = app
        .request(Method::PUT, "/api/v1/bookings")
        .bearer_auth(app.token(admin()))
        .json(&visit());
    app.refuses_request(request, StatusCode::METHOD_NOT_ALLOWED)
        .await;
}

/// Herald with quick connection timeouts, for clients that stall.
async fn impatient() -> TestApp {
    TestApp::spawn_with(common::Options {
        connections: Some(api::server::ConnectionArgs {
            header_read_timeout: Duration::from_millis(500).into(),
            body_read_timeout: Duration::from_millis(500).into(),
            ..api::server::ConnectionArgs::default()
        }),
        ..common::Options::default()
    })
    .await
}

/// What the server sends on `stream` until it closes it, waiting at most 10 s.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server kept the connection open")
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = impatient().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: herald\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    read_until_closed(&mut stream).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408_and_stores_nothing() {
    let app = impatient().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let token = app.token(patient());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/v1/bookings HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"call_type\""
    );
    let answer = app
        .stores_nothing(async {
            stream.write_all(head.as_bytes()).await.unwrap();
            read_until_closed(&mut stream).await
        })
        .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test]
async fn headers_of_a_megabyte_are_answered_431_with_a_problem() {
    let app = TestApp::spawn().await;
    let reply = app
        .refuses_request(
            app.request(Method::GET, "/health/live")
                .header("x-padding", "p".repeat(1024 * 1024)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        )
        .await;
    assert!(
        reply.body["detail"].as_str().unwrap().contains("headers"),
        "{}",
        reply.body
    );
}
