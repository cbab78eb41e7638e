//! Traces exported over OTLP: a `herald up` process (the tracing subscriber
//! is one per process) exports to an OTLP/HTTP receiver the test runs, and
//! one request's trace shows everything it set in motion.

use crate::common::{fresh_database, DevHerald, Leftovers, Reply};
use crate::live::{connect_to, next_event};
use crate::payment_flow::eventually;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api::provider::webhook::WebhookSecret;
use axum::extract::State;
use axum::routing::post;
use axum::Json;
use chrono::Utc;
use projections::Projection;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// The secret Herald checks the test's payment notifications with.
const WEBHOOK_SECRET: &str = "tracing-webhook-secret-0123456789";

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Every span posted to the receiver so far.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver of JSON traces on a free port: its base URL and
/// what it received.
async fn otlp_receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), received)
}

/// `POST /v1/traces`: an `ExportTraceServiceRequest` as JSON.
async fn receive(State(received): State<Received>, Json(body): Json<Value>) -> Json<Value> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let mut spans = Vec::new();
    for resource in body["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let attributes = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|attribute| {
                        let value = &attribute["value"];
                        let value = match (&value["stringValue"], &value["intValue"]) {
                            (Value::String(text), _) | (_, Value::String(text)) => text.clone(),
                            (_, Value::Number(number)) => number.to_string(),
                            _ => value.to_string(),
                        };
                        (text(&attribute["key"]), value)
                    })
                    .collect();
                spans.push(Span {
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    name: text(&span["name"]),
                    attributes,
                });
            }
        }
    }
    received.lock().unwrap().extend(spans);
    Json(json!({}))
}

/// A `herald up --dev` on a database and stream of its own, exporting to a
/// receiver of its own in batches due every `batch_every` milliseconds.
struct Traced {
    herald: DevHerald,
    received: Received,
    database: String,
    prefix: String,
    _leftovers: Leftovers,
}

impl Traced {
    /// Starts one with `env` set as well.
    async fn start(batch_every: &str, env: &[(&str, &str)]) -> Self {
        let (endpoint, received) = otlp_receiver().await;
        let database = fresh_database().await;
        let prefix = format!("traces{}", Uuid::new_v4().simple());
        let leftovers = Leftovers::new(
            Some(database.clone()),
            Some(herald_nats::Topology::new(&prefix)),
        );
        let mut all = vec![
            ("HERALD_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", batch_every),
        ];
        all.extend_from_slice(env);
        let herald = DevHerald::start_with(&database, &prefix, &all);
        Self {
            herald,
            received,
            database,
            prefix,
            _leftovers: leftovers,
        }
    }
}

/// The spans of `trace_id` received so far.
fn spans_of(received: &Received, trace_id: &str) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .cloned()
        .collect()
}

/// The one span named `name` whose attributes include `attributes`.
fn find<'a>(spans: &'a [Span], name: &str, attributes: &[(&str, &str)]) -> Option<&'a Span> {
    let mut found = spans.iter().filter(|span| {
        span.name == name
            && attributes
                .iter()
                .all(|(key, value)| span.attribute(key) == Some(value))
    });
    let first = found.next();
    assert!(
        found.next().is_none(),
        "more than one {name} {attributes:?} in {spans:#?}"
    );
    first
}

#[tokio::test]
async fn a_chat_message_is_traced_to_the_socket_it_is_pushed_to() {
    let Traced {
        herald, received, ..
    } = &Traced::start("100", &[]).await;
    let (patient, doctor) = (&herald.users[0], &herald.users[1]);
    assert_eq!(doctor.role, "doctor");
    let client = reqwest::Client::new();
    let chat = Reply::send(
        client
            .post(format!("{}/chats", herald.base))
            .bearer_auth(&patient.token)
            .json(&json!({ "kind": "direct", "members": [doctor.sub] })),
    )
    .await;
    assert_eq!(chat.status, StatusCode::CREATED, "{}", chat.body);
    let mut socket = connect_to(&format!(
        "{}/ws?token={}",
        herald.base.replacen("http://", "ws://", 1),
        doctor.token
    ))
    .await;

    let trace_id = Uuid::new_v4().simple().to_string();
    let caller_span = &Uuid::new_v4().simple().to_string()[..16];
    let sent = Reply::send(
        client
            .post(format!("{}/chats/{}/messages", herald.base, chat.id()))
            .bearer_auth(&patient.token)
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .json(&json!({ "body": "Are you on your way?" })),
    )
    .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let pushed = next_event(&mut socket, "MessageSent").await;
    assert_eq!(pushed["event"]["body"], "Are you on your way?");

    let sent_live = [("event_type", "MessageSent")];
    let projected = [("follower", "chats"), ("event_type", "MessageSent")];
    eventually("the message's trace reaches the live push", || {
        let spans = spans_of(received, &trace_id);
        let there = find(&spans, "live", &sent_live).is_some()
            && find(&spans, "project", &projected).is_some();
        async move { there }
    })
    .await;
    let spans = spans_of(received, &trace_id);
    let request = find(&spans, "request", &[]).unwrap();
    let command = find(&spans, "command", &[("aggregate", "Chat")]).unwrap();
    let live = find(&spans, "live", &sent_live).unwrap();
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(command.parent_span_id, request.span_id);
    assert_eq!(live.parent_span_id, command.span_id);
    assert_eq!(live.attribute("sockets"), Some("1"), "{live:#?}");
}

#[tokio::test]
async fn spans_not_yet_exported_are_flushed_when_herald_shuts_down() {
    // No batch is due for an hour.
    let Traced {
        herald,
        received,
        _leftovers,
        ..
    } = Traced::start("3600000", &[]).await;
    let patient = &herald.users[0];
    let booked = Reply::send(
        reqwest::Client::new()
            .post(format!("{}/bookings", herald.base))
            .bearer_auth(&patient.token)
            .json(&json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": 150000 })),
    )
    .await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.body);
    assert!(received.lock().unwrap().is_empty(), "exported before due");

    let exited = tokio::task::spawn_blocking(move || herald.stop())
        .await
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    let received = received.lock().unwrap();
    let booking = received
        .iter()
        .find(|span| {
            span.name == "command"
                && span.attribute("aggregate_id") == Some(booked.body["id"].as_str().unwrap())
        })
        .expect("the booking's command was exported at exit");
    assert!(received
        .iter()
        .any(|span| span.name == "request" && span.span_id == booking.parent_span_id));
}

#[tokio::test]
async fn a_payment_notification_is_traced_through_commit_relay_projections_process_manager_and_live_push(
) {
    let traced = Traced::start("100", &[("HERALD_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await;
    let Traced {
        herald,
        received,
        database,
        prefix,
        ..
    } = &traced;
    let root = herald.base.trim_end_matches("/api/v1").to_owned();
    let patient = &herald.users[0];
    assert_eq!(patient.role, "patient");
    let client = reqwest::Client::new();

    // A booking and its payment, each in a trace of its own.
    let as_patient = |path: &str, body: Value| {
        Reply::send(
            client
                .post(format!("{}{path}", herald.base))
                .bearer_auth(&patient.token)
                .json(&body),
        )
    };
    let booked = as_patient(
        "/bookings",
        json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": 150000 }),
    )
    .await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.body);
    let paying = as_patient(
        "/payments",
        json!({ "booking_id": booked.id(), "method": "card" }),
    )
    .await;
    assert_eq!(paying.status, StatusCode::CREATED, "{}", paying.body);
    let payment = paying.body;

    // The provider's notification arrives within a trace of the caller's.
    let trace_id = Uuid::new_v4().simple().to_string();
    let caller_span = &Uuid::new_v4().simple().to_string()[..16];
    let body = serde_json::to_vec(&json!({
        "type": "notification",
        "event": "payment.succeeded",
        "object": {
            "id": payment["provider_payment_id"],
            "status": "succeeded",
            "amount": { "value": "1500.00", "currency": "RUB" },
            "metadata": { "payment_id": payment["id"] },
        },
    }))
    .unwrap();
    let signature = WebhookSecret::new(secrecy::SecretString::from(WEBHOOK_SECRET))
        .unwrap()
        .sign(Utc::now().timestamp(), &body);
    let notified = client
        .post(format!("{root}/webhooks/payments"))
        .header("content-type", "application/json")
        .header("x-herald-signature", signature)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(notified.status(), StatusCode::OK);

    let payment_projections: Vec<&str> = Projection::ALL
        .into_iter()
        .filter(|projection| projection.follows("Payment", "PaymentSucceeded"))
        .map(Projection::name)
        .collect();
    let booking_projections: Vec<&str> = Projection::ALL
        .into_iter()
        .filter(|projection| projection.follows("Booking", "BookingPaid"))
        .map(Projection::name)
        .collect();
    assert!(payment_projections.contains(&"payments"));
    assert!(booking_projections.contains(&"bookings"));
    let process = commands::process_manager::CHECKPOINT;
    // What must be in the trace: (span name, attributes).
    let mut expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("request", vec![("path", "/webhooks/payments")]),
        ("command", vec![("aggregate", "Payment")]),
        ("publish", vec![("event_type", "PaymentSucceeded")]),
        ("live", vec![("event_type", "PaymentSucceeded")]),
        (
            "react",
            vec![("follower", process), ("event_type", "PaymentSucceeded")],
        ),
        // The process manager marks the booking paid, in the same trace.
        ("command", vec![("aggregate", "Booking")]),
        ("publish", vec![("event_type", "BookingPaid")]),
        ("live", vec![("event_type", "BookingPaid")]),
        (
            "react",
            vec![("follower", process), ("event_type", "BookingPaid")],
        ),
    ];
    for projection in &payment_projections {
        expected.push((
            "project",
            vec![("follower", projection), ("event_type", "PaymentSucceeded")],
        ));
    }
    for projection in &booking_projections {
        expected.push((
            "project",
            vec![("follower", projection), ("event_type", "BookingPaid")],
        ));
    }
    eventually("the whole chain is exported in one trace", || {
        let spans = spans_of(received, &trace_id);
        let all_there = expected
            .iter()
            .all(|(name, attributes)| find(&spans, name, attributes).is_some());
        async move { all_there }
    })
    .await;

    let spans = spans_of(received, &trace_id);
    let span = |name: &str, attributes: &[(&str, &str)]| find(&spans, name, attributes).unwrap();
    let request = span("request", &[("path", "/webhooks/payments")]);
    assert_eq!(
        request.parent_span_id, caller_span,
        "the caller's span is the request's parent"
    );
    let paid = span("command", &[("aggregate", "Payment")]);
    let marked = span("command", &[("aggregate", "Booking")]);
    let reacted = span(
        "react",
        &[("follower", process), ("event_type", "PaymentSucceeded")],
    );
    assert_eq!(
        marked.parent_span_id, reacted.span_id,
        "the process manager's command"
    );
    // Each command's span has its commit beneath it, and is the parent of
    // everything that follows its events: its context is in their metadata
    // and in the headers they were published with.
    let traceparents = traceparents(database, prefix).await;
    for (command, event_type) in [(paid, "PaymentSucceeded"), (marked, "BookingPaid")] {
        let named = format!("00-{trace_id}-{}-01", command.span_id);
        assert_eq!(traceparents[event_type], (Some(named.clone()), Some(named)));
        let children: Vec<&Span> = spans
            .iter()
            .filter(|span| span.parent_span_id == command.span_id)
            .collect();
        assert!(
            children.iter().any(|span| span.name == "commit"),
            "{event_type}: no commit in {children:#?}"
        );
        for name in ["publish", "live", "react", "project"] {
            for child in spans.iter().filter(|span| {
                span.name == name && span.attribute("event_type") == Some(event_type)
            }) {
                assert_eq!(
                    child.parent_span_id, command.span_id,
                    "{name} of {event_type} follows its command"
                );
            }
        }
    }
    // One tree: every span but the request hangs from another of the trace.
    for span in &spans {
        if span.span_id != request.span_id {
            assert!(
                spans
                    .iter()
                    .any(|parent| parent.span_id == span.parent_span_id),
                "{span:#?} has no parent in the trace"
            );
        }
    }
    // The booking and the payment were traced apart from the notification.
    assert!(received
        .lock()
        .unwrap()
        .iter()
        .any(|span| span.name == "command" && span.trace_id != trace_id));
}

/// Each event type's `traceparent` in the metadata of its last event in the
/// log, and in the headers of its last message in the stream.
async fn traceparents(
    database: &str,
    prefix: &str,
) -> HashMap<String, (Option<String>, Option<String>)> {
    let pool = sqlx::PgPool::connect(database).await.unwrap();
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_type, metadata->>'traceparent' FROM events ORDER BY event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut traceparents: HashMap<String, (Option<String>, Option<String>)> = stored
        .into_iter()
        .map(|(event_type, traceparent)| (event_type, (traceparent, None)))
        .collect();
    let jetstream = async_nats::jetstream::new(
        async_nats::connect(herald_nats::testing::nats_url())
            .await
            .unwrap(),
    );
    let topology = herald_nats::Topology::new(prefix);
    let mut stream = topology.ensure_stream(&jetstream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
        };
        if let Some(event_type) = header(herald_nats::jetstream::headers::EVENT_TYPE) {
            traceparents.entry(event_type).or_default().1 =
                header(herald_nats::jetstream::headers::TRACEPARENT);
        }
    }
    traceparents
}
