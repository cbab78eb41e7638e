//! The OpenAPI document at `/openapi.json` describes what Herald serves: every
//! documented operation is served, every route is documented, and real answers
//! match their documented schemas.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{admin, doctor, patient, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Every `(method, path)` the document lists.
fn operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if let Ok(method) = method.to_uppercase().parse::<Method>() {
                found.push((method, path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// A path with each `{parameter}` replaced by a fresh UUID.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(&Uuid::new_v4().to_string());
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A schema that checks a value against `schema` (usually a `$ref`) with the
/// document's components in scope.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&root).unwrap()
}

/// Checks `body` against the schema documented for `status` of `method path`
/// and that it carries no field the schema does not name.
fn assert_matches(doc: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let operation = &doc["paths"][path][method.to_lowercase()];
    let mut response = operation["responses"][status.as_str()].clone();
    if let Some(reference) = response["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        response = doc["components"]["responses"][name].clone();
    }
    let content = response["content"].as_object().unwrap_or_else(|| {
        panic!("{method} {path} documents no body for {status}");
    });
    let schema = &content.values().next().unwrap()["schema"];
    let validator = validator(doc, schema);
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {body} breaks its schema: {errors:?}"
    );
    assert_no_undocumented_fields(doc, schema, body, &format!("{method} {path} {status}"));
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => resolve(
            doc,
            &doc["components"]["schemas"][reference.rsplit('/').next().unwrap()],
        ),
        None => schema,
    }
}

/// Fails when an object in `body` has a member its schema does not document,
/// so that a field added to a read model cannot stay out of the document.
fn assert_no_undocumented_fields(doc: &Value, schema: &Value, body: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(parts) = schema["allOf"].as_array() {
        // A struct with a flattened part: its parts document its members
        // together, unless one of them admits any member.
        let parts: Vec<&Value> = parts.iter().map(|part| resolve(doc, part)).collect();
        if parts.iter().any(|part| part["properties"].is_null()) {
            return;
        }
        let mut properties = serde_json::Map::new();
        for part in parts {
            properties.extend(part["properties"].as_object().unwrap().clone());
        }
        let merged = json!({ "properties": properties });
        assert_no_undocumented_fields(doc, &merged, body, at);
        return;
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        if let Some(variant) = variants.iter().find(|v| resolve(doc, v)["type"] != "null") {
            assert_no_undocumented_fields(doc, variant, body, at);
        }
        return;
    }
    match body {
        Value::Object(members) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, value) in members {
                    let property = properties
                        .get(name)
                        .unwrap_or_else(|| panic!("{at}: `{name}` is not documented"));
                    assert_no_undocumented_fields(doc, property, value, at);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                assert_no_undocumented_fields(doc, &schema["items"], item, at);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = TestApp::spawn_with_payments().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let operations = operations(&doc);
    assert!(operations.len() >= 30, "{}", operations.len());
    for (method, path, _) in operations {
        let response = app
            .client
            .request(
                method.clone(),
                format!("{}{}", app.address, concrete(&path)),
            )
            .bearer_auth(app.token(admin()))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let is_json = response
            .headers()
            .get("content-type")
            .is_some_and(|value| value.to_str().unwrap().contains("json"));
        // A stream's body never ends; only problem answers matter here.
        let body: Value = if is_json {
            response.json().await.unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["detail"] == "no such endpoint"),
            "{method} {path} is documented but not served"
        );
    }
}

#[tokio::test]
async fn the_document_lists_every_route_of_the_contract() {
    let app = TestApp::spawn_with_payments().await;
    let doc = document(&app).await;
    let listed: Vec<String> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    // The contract's routes (API.md); the routes themselves are registered
    // together with their descriptions, so none can be served undocumented.
    for route in [
        "POST /api/v1/chats",
        "POST /api/v1/chats/{id}/members",
        "DELETE /api/v1/chats/{id}/members/{user_id}",
        "POST /api/v1/chats/{id}/messages",
        "PATCH /api/v1/chats/{id}/messages/{message_id}",
        "DELETE /api/v1/chats/{id}/messages/{message_id}",
        "POST /api/v1/chats/{id}/read",
        "POST /api/v1/chats/{id}/attachments",
        "GET /api/v1/chats/{id}/attachments/{attachment_id}",
        "PUT /attachments/upload",
        "GET /attachments/download",
        "POST /api/v1/bookings",
        "POST /api/v1/bookings/{id}/assign",
        "POST /api/v1/bookings/{id}/complete",
        "POST /api/v1/bookings/{id}/cancel",
        "POST /api/v1/payments",
        "POST /api/v1/payments/{id}/refund",
        "POST /webhooks/payments",
        "GET /api/v1/chats",
        "GET /api/v1/chats/{id}",
        "GET /api/v1/chats/{id}/messages",
        "GET /api/v1/bookings",
        "GET /api/v1/bookings/{id}",
        "GET /api/v1/payments",
        "GET /api/v1/payments/{id}",
        "GET /api/v1/dashboard/summary",
        "GET /api/v1/dashboard/activity",
        "GET /api/v1/dashboard/pipeline",
        "POST /api/v1/dashboard/dead-letters/{projection}/retry",
        "GET /dashboard",
        "GET /dashboard/assets/{file}",
        "GET /api/v1/events",
        "GET /api/v1/aggregates/{type}/{id}/events",
        "GET /api/v1/aggregates/{type}/{id}",
        "GET /api/v1/audit/verify",
        "GET /api/v1/ws",
        "GET /api/v1/stream",
        "GET /health/live",
        "GET /health/ready",
        "GET /metrics",
        "GET /openapi.json",
        "GET /docs",
    ] {
        assert!(
            listed.contains(&route.to_owned()),
            "{route} is not documented"
        );
    }
}

#[tokio::test]
async fn api_routes_but_signing_up_and_in_require_the_bearer_token_and_operations_do_not() {
    let app = TestApp::spawn_with_payments().await;
    let doc = document(&app).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, operation) in operations(&doc) {
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        let open = path.starts_with("/api/v1/auth/");
        assert_eq!(
            secured,
            path.starts_with("/api/v1/") && !open,
            "{method} {path}"
        );
        for status in ["429", "500"] {
            assert!(
                operation["responses"].get(status).is_some(),
                "{method} {path} does not document {status}"
            );
        }
    }
}

#[tokio::test]
async fn the_docs_page_is_served_from_herald_itself() {
    let app = TestApp::spawn().await;
    let page = app
        .client
        .get(format!("{}/docs/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page loads something from elsewhere: {html}"
    );
    let initializer = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(initializer.status(), StatusCode::OK);
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let mut app = TestApp::spawn_with_pipeline().await;
    let doc = document(&app).await;
    let (alice, bob, boss) = (patient(), app.enroll(doctor()).await, admin());

    let created = app
        .post(
            "/api/v1/chats",
            alice,
            json!({ "kind": "group", "title": "Care team", "members": [bob.user_id] }),
        )
        .await;
    assert_matches(&doc, "POST", "/api/v1/chats", created.status, &created.body);
    let chat = created.id();
    let sent = app
        .post(
            &format!("/api/v1/chats/{chat}/messages"),
            alice,
            json!({ "body": "Hello" }),
        )
        .await;
    assert_matches(
        &doc,
        "POST",
        "/api/v1/chats/{id}/messages",
        sent.status,
        &sent.body,
    );

    let booked = app
        .post(
            "/api/v1/bookings",
            alice,
            json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": 150000 }),
        )
        .await;
    assert_matches(
        &doc,
        "POST",
        "/api/v1/bookings",
        booked.status,
        &booked.body,
    );
    let booking = booked.id();

    app.wait_for_projections().await;
    for (actor, path, documented) in [
        (alice, "/api/v1/chats".to_owned(), "/api/v1/chats"),
        (alice, format!("/api/v1/chats/{chat}"), "/api/v1/chats/{id}"),
        (
            alice,
            format!("/api/v1/chats/{chat}/messages"),
            "/api/v1/chats/{id}/messages",
        ),
        (alice, "/api/v1/bookings".to_owned(), "/api/v1/bookings"),
        (
            alice,
            format!("/api/v1/bookings/{booking}"),
            "/api/v1/bookings/{id}",
        ),
        (
            alice,
            format!("/api/v1/payments?booking_id={booking}"),
            "/api/v1/payments",
        ),
        (
            boss,
            "/api/v1/dashboard/summary".to_owned(),
            "/api/v1/dashboard/summary",
        ),
        (
            boss,
            "/api/v1/dashboard/activity".to_owned(),
            "/api/v1/dashboard/activity",
        ),
        (
            boss,
            "/api/v1/dashboard/pipeline".to_owned(),
            "/api/v1/dashboard/pipeline",
        ),
        (boss, "/api/v1/events".to_owned(), "/api/v1/events"),
        (
            boss,
            format!("/api/v1/aggregates/Chat/{chat}/events"),
            "/api/v1/aggregates/{type}/{id}/events",
        ),
        (
            boss,
            format!("/api/v1/aggregates/Booking/{booking}"),
            "/api/v1/aggregates/{type}/{id}",
        ),
        (
            boss,
            "/api/v1/audit/verify".to_owned(),
            "/api/v1/audit/verify",
        ),
        (
            bob,
            "/api/v1/notifications".to_owned(),
            "/api/v1/notifications",
        ),
        (
            bob,
            "/api/v1/me/notifications".to_owned(),
            "/api/v1/me/notifications",
        ),
        (bob, "/api/v1/me".to_owned(), "/api/v1/me"),
    ] {
        let reply = app.send(Method::GET, &path, actor, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert_matches(&doc, "GET", documented, reply.status, &reply.body);
    }

    let invalid = app
        .post(
            "/api/v1/bookings",
            alice,
            json!({ "call_type": "house", "amount_minor": 0 }),
        )
        .await;
    assert_eq!(invalid.headers["content-type"], "application/problem+json");
    assert_matches(
        &doc,
        "POST",
        "/api/v1/bookings",
        invalid.status,
        &invalid.body,
    );
    let missing = app
        .send(
            Method::GET,
            &format!("/api/v1/bookings/{}", Uuid::new_v4()),
            alice,
            None,
        )
        .await;
    assert_matches(
        &doc,
        "GET",
        "/api/v1/bookings/{id}",
        missing.status,
        &missing.body,
    );
    let forbidden = app
        .send(Method::GET, "/api/v1/dashboard/summary", alice, None)
        .await;
    assert_matches(
        &doc,
        "GET",
        "/api/v1/dashboard/summary",
        forbidden.status,
        &forbidden.body,
    );

    app.stop_pipeline().await;
}

#[tokio::test]
async fn a_nul_character_is_refused_as_a_client_error_not_a_server_error() {
    let app = TestApp::spawn_with_payments().await;
    let alice = patient();
    let chat = app.group_chat(alice, &[doctor()]).await;

    let message = app
        .post(
            &format!("/api/v1/chats/{chat}/messages"),
            alice,
            json!({ "body": "a\u{0}b" }),
        )
        .await;
    assert_eq!(
        message.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        message.body
    );
    assert_eq!(message.body["errors"][0]["field"], "body");

    let page = app
        .client
        .get(format!("{}/sandbox/payments/sbx_%00", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert_eq!(page.headers()["content-type"], "application/problem+json");
}
