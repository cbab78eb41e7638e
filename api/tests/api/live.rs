//! The live gateway: WebSocket chats and the SSE stream, across two Herald
//! instances sharing one database and one stream.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use api::live::LiveConfig;
use common::*;
use domain::values::Actor;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for a frame that must come.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Connects `actor` to `app`'s WebSocket and waits until it is live.
pub(crate) async fn connect(app: &TestApp, actor: Actor) -> Socket {
    connect_to(&app.ws_url(actor)).await
}

/// Connects to the WebSocket at `url` and waits until it is live.
pub(crate) async fn connect_to(url: &str) -> Socket {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let ready = next_frame(&mut socket).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    socket
}

/// The next JSON frame, skipping pings.
pub(crate) async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("no frame came in time")
            .expect("the socket closed")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame answering the client (an ack or an error), skipping
/// events, presence and typing that arrive meanwhile.
pub(crate) async fn next_reply(socket: &mut Socket) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if !["event", "presence", "typing"].contains(&frame["type"].as_str().unwrap_or_default()) {
            return frame;
        }
    }
}

/// The next frame of `kind` (`"presence"`, `"typing"`, …), skipping others.
pub(crate) async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// The next event frame of type `event_type`, skipping other events.
pub(crate) async fn next_event(socket: &mut Socket, event_type: &str) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == "event" && frame["event_type"] == event_type {
            return frame;
        }
    }
}

/// The next notification frame, skipping chat events.
async fn next_notification(socket: &mut Socket) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == "notification" {
            return frame;
        }
    }
}

/// Asserts that no text frame arrives within `quiet`.
pub(crate) async fn assert_silent(socket: &mut Socket, quiet: Duration) {
    if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(quiet, socket.next()).await {
        panic!("expected silence, got {text}");
    }
}

pub(crate) async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

async fn post_message(app: &TestApp, chat: Uuid, author: Actor, body: &str) -> Uuid {
    app.message(chat, author, body).await.id()
}

#[tokio::test]
async fn a_message_sent_through_one_instance_reaches_a_member_connected_to_another() {
    let a = TestApp::spawn_live(LiveConfig::default()).await;
    let b = TestApp::spawn_live_on(&a.database_url, &a.topology, LiveConfig::default()).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = a.group_chat(doctor, &[patient]).await;
    let mut on_b = connect(&b, patient).await;
    let mut on_a = connect(&a, doctor).await;

    let message_id = post_message(&a, chat, doctor, "How are you feeling?").await;
    let frame = next_event(&mut on_b, "MessageSent").await;
    assert_eq!(frame["chat_id"], chat.to_string());
    assert_eq!(frame["event"]["message_id"], message_id.to_string());
    assert_eq!(frame["event"]["body"], "How are you feeling?");
    assert!(frame["position"].as_i64().unwrap() > 0);

    // And back: the patient answers over B's socket, the doctor hears it on A.
    send(
        &mut on_b,
        json!({ "type": "send_message", "chat_id": chat, "client_id": "c-1", "body": "Better" }),
    )
    .await;
    let answer = loop {
        let frame = next_event(&mut on_a, "MessageSent").await;
        if frame["event"]["author"] != doctor.user_id.to_string() {
            break frame;
        }
    };
    assert_eq!(answer["event"]["body"], "Better");
    assert_eq!(answer["event"]["author"], patient.user_id.to_string());
}

#[tokio::test]
async fn send_message_is_acknowledged_with_its_seq_once_committed_and_a_resend_stores_nothing() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    let mut socket = connect(&app, patient).await;
    let frame =
        json!({ "type": "send_message", "chat_id": chat, "client_id": "m-1", "body": "Hello" });

    send(&mut socket, frame.clone()).await;
    let ack = next_reply(&mut socket).await;
    assert_eq!(ack["client_id"], "m-1");
    assert_eq!(ack["seq"], 1);
    let message_id = ack["message_id"].as_str().unwrap();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'MessageSent'
            AND payload->'MessageSent'->>'message_id' = $1",
    )
    .bind(message_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1, "the ack comes after the commit");

    let before = app.event_count().await;
    send(&mut socket, frame).await;
    let again = next_reply(&mut socket).await;
    assert_eq!(again, ack, "a resend answers the first outcome");
    assert_eq!(app.event_count().await, before, "a resend stores nothing");
}

#[tokio::test]
async fn a_refused_frame_is_answered_with_an_error_frame_and_the_socket_stays_open() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (doctor, patient, stranger) = (doctor(), patient(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    let mut socket = connect(&app, stranger).await;

    send(
        &mut socket,
        json!({ "type": "send_message", "chat_id": chat, "client_id": "x-1", "body": "Let me in" }),
    )
    .await;
    let error = next_reply(&mut socket).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["client_id"], "x-1");
    let status = error["status"].as_u64().unwrap();
    assert!(status == 403 || status == 404, "{error}");

    let mut member = connect(&app, patient).await;
    send(
        &mut member,
        json!({ "type": "send_message", "chat_id": chat, "client_id": "x-2", "body": "   " }),
    )
    .await;
    let error = next_reply(&mut member).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["status"], 422);
    assert_eq!(error["errors"][0]["field"], "body", "{error}");

    send(&mut member, json!({ "type": "dance" })).await;
    let error = next_reply(&mut member).await;
    assert_eq!(error["status"], 400, "{error}");

    send(
        &mut member,
        json!({ "type": "send_message", "chat_id": chat, "client_id": "x-3", "body": "Still here" }),
    )
    .await;
    let ack = next_reply(&mut member).await;
    assert_eq!(ack["client_id"], "x-3");
}

#[tokio::test]
async fn a_frame_and_a_request_with_the_same_bad_body_get_the_same_answer() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    let mut member = connect(&app, patient).await;
    for body in ["a\u{0}b", "\u{200B}\u{FEFF}"] {
        send(
            &mut member,
            json!({ "type": "send_message", "chat_id": chat, "client_id": "bad", "body": body }),
        )
        .await;
        let error = next_reply(&mut member).await;
        let rest = app
            .post(
                &format!("/api/v1/chats/{chat}/messages"),
                patient,
                json!({ "body": body }),
            )
            .await;
        assert_eq!(rest.status, 422, "{}", rest.body);
        assert_eq!(error["status"], 422, "{error}");
        assert_eq!(error["errors"], rest.body["errors"], "{error}");
    }
}

#[tokio::test]
async fn a_removed_member_stops_receiving_at_once() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (doctor, stays, leaves) = (doctor(), patient(), patient());
    let chat = app.group_chat(doctor, &[stays, leaves]).await;
    let mut staying = connect(&app, stays).await;
    let mut leaving = connect(&app, leaves).await;

    post_message(&app, chat, doctor, "before").await;
    assert_eq!(
        next_event(&mut leaving, "MessageSent").await["event"]["body"],
        "before"
    );
    next_event(&mut staying, "MessageSent").await;

    let reply = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/chats/{chat}/members/{}", leaves.user_id),
            leaves,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let removed = next_event(&mut leaving, "MemberRemoved").await;
    assert_eq!(removed["event"]["user_id"], leaves.user_id.to_string());

    post_message(&app, chat, doctor, "after").await;
    assert_eq!(
        next_event(&mut staying, "MessageSent").await["event"]["body"],
        "after"
    );
    // The hub routes one entry to every socket before the next, so the
    // removed member would have it by now.
    assert_silent(&mut leaving, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_member_added_later_receives_the_chat_from_then_on() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (doctor, newcomer) = (doctor(), app.enroll(doctor()).await);
    let chat = app.group_chat(doctor, &[]).await;
    let mut socket = connect(&app, newcomer).await;
    post_message(&app, chat, doctor, "private").await;

    let reply = app
        .post(
            &format!("/api/v1/chats/{chat}/members"),
            doctor,
            json!({ "user_id": newcomer.user_id }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    post_message(&app, chat, doctor, "welcome").await;

    let added = next_frame(&mut socket).await;
    assert_eq!(added["event_type"], "MemberAdded", "{added}");
    let welcome = next_frame(&mut socket).await;
    assert_eq!(welcome["event"]["body"], "welcome", "{welcome}");
}

#[tokio::test]
async fn an_idle_socket_is_pinged_and_kept_while_it_answers_and_closed_once_it_falls_silent() {
    let config = LiveConfig {
        ping_interval: Duration::from_millis(200),
        ..LiveConfig::default()
    };
    let app = TestApp::spawn_live(config).await;
    let (doctor, answers, silent) = (doctor(), patient(), patient());
    let chat = app.group_chat(doctor, &[answers, silent]).await;
    let mut answering = connect(&app, answers).await;
    let mut quiet = connect(&app, silent).await;

    // A client that reads answers each ping with a pong (tungstenite does so
    // on its own), for well over three ping intervals.
    let mut pings = 0;
    let listening = tokio::time::timeout(Duration::from_millis(1500), async {
        while let Some(Ok(message)) = answering.next().await {
            if matches!(message, Message::Ping(_)) {
                pings += 1;
            }
        }
    })
    .await;
    assert!(listening.is_err(), "the answering socket was closed");
    assert!(pings >= 3, "{pings} pings in 1.5 s at one per 200 ms");
    post_message(&app, chat, doctor, "still there?").await;
    let event = next_event(&mut answering, "MessageSent").await;
    assert_eq!(event["event"]["body"], "still there?", "{event}");

    // The other one never read, so never answered: the server has closed it.
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match quiet.next().await {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent socket is still open");
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_while_another_member_keeps_receiving() {
    let config = LiveConfig {
        outgoing_buffer: 32,
        write_timeout: Duration::from_secs(1),
        ..LiveConfig::default()
    };
    let app = TestApp::spawn_live_with_small_send_buffers(config).await;
    let (doctor, reads, stalls) = (doctor(), patient(), patient());
    let chat = app.group_chat(doctor, &[reads, stalls]).await;
    let mut reader = connect(&app, reads).await;

    // A client with a tiny receive window that never reads after the handshake.
    let url = app.ws_url(stalls);
    let host = app.address.trim_start_matches("http://").to_owned();
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(host.parse().unwrap()).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(
        url.into_client_request().unwrap(),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    assert_eq!(next_frame(&mut stalled).await["type"], "ready");

    // Each message is posted once the reading member has the previous one,
    // so only the stalled client ever falls behind.
    let sent = 150;
    let body = "x".repeat(1000);
    for _ in 0..sent {
        post_message(&app, chat, doctor, &body).await;
        next_event(&mut reader, "MessageSent").await;
    }

    // The stalled client finds what its buffers held, then the end.
    let mut received = 0;
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = stalled.next().await {
            match message {
                Ok(Message::Text(_)) => received += 1,
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the slow client was not disconnected ({received} frames read)"
    );
    assert!(received < sent, "the slow client got all {received} frames");
}

#[tokio::test]
async fn the_handshake_needs_a_valid_token_and_a_running_hub() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let url = format!("{}/api/v1/ws", app.address.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    // The Authorization header works as well as `?token=`.
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token(patient())).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["type"], "ready");

    let without = TestApp::spawn().await;
    for path in ["/api/v1/ws", "/api/v1/stream"] {
        let reply = Reply::send(
            without
                .request(reqwest::Method::GET, path)
                .bearer_auth(without.token(patient())),
        )
        .await;
        reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// One SSE event as sent.
#[derive(Debug)]
struct SseEvent {
    id: i64,
    event: String,
    data: Value,
}

/// An open SSE response, parsed as it arrives.
pub(crate) struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    pub(crate) async fn open(app: &TestApp, actor: Actor, last_event_id: Option<i64>) -> Self {
        let mut request = app
            .request(reqwest::Method::GET, "/api/v1/stream")
            .bearer_auth(app.token(actor));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event with an `id:`: a log entry.
    async fn next(&mut self) -> SseEvent {
        loop {
            let (id, event, data) = self.next_block().await;
            if let Some(id) = id {
                return SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
        }
    }

    /// The data of the next `notification` event.
    async fn next_notification(&mut self) -> Value {
        loop {
            let (id, event, data) = self.next_block().await;
            if event == "notification" {
                assert_eq!(id, None, "a notification is not a log position");
                return serde_json::from_str(&data).unwrap();
            }
        }
    }

    /// The next block of lines: its `id:`, `event:` and `data:`.
    async fn next_block(&mut self) -> (Option<i64>, String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse().unwrap());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                return (id, event, data);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("no SSE event came in time")
                .unwrap()
                .expect("the SSE stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The log positions of every event of these aggregates.
async fn positions_of(app: &TestApp, aggregates: &[Uuid]) -> Vec<i64> {
    let ids: Vec<String> = aggregates.iter().map(Uuid::to_string).collect();
    sqlx::query_scalar(
        "SELECT l.position FROM event_log l JOIN events e ON e.event_id = l.event_id
          WHERE e.aggregate_id = ANY($1) ORDER BY l.position",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_sse_stream_shows_what_the_caller_may_see_and_resumes_after_last_event_id_without_a_gap_or_a_repeat(
) {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (me, other, doctor) = (patient(), patient(), doctor());
    let mut stream = Sse::open(&app, me, None).await;

    let booking = app.booking(me).await;
    app.booking(other).await;
    // Joining the chat opens an account for `me`, which they see too.
    let chat = app.group_chat(doctor, &[me]).await;
    post_message(&app, chat, doctor, "one").await;

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(stream.next().await);
    }
    assert_eq!(seen[0].event, "BookingRequested");
    assert_eq!(seen[0].data["aggregate_id"], booking.to_string());
    let last = seen.last().unwrap().id;
    drop(stream);

    // While the dashboard is away.
    post_message(&app, chat, doctor, "two").await;
    app.booking(other).await;
    let reply = app
        .post(
            &format!("/api/v1/bookings/{booking}/cancel"),
            me,
            json!({ "reason": "feeling better" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.wait_for_projections().await;

    let mut stream = Sse::open(&app, me, Some(last)).await;
    let expected = positions_of(&app, &[booking, chat, me.user_id]).await;
    while seen.len() < expected.len() {
        seen.push(stream.next().await);
    }
    // And live again after the replay.
    post_message(&app, chat, doctor, "three").await;
    let live = stream.next().await;
    assert_eq!(live.data["event"]["body"], "three");
    seen.push(live);

    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    let expected = positions_of(&app, &[booking, chat, me.user_id]).await;
    assert_eq!(ids, expected, "every visible entry once, in order");
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len());
}

/// The close frame `socket` ends with, waiting at most [`PATIENCE`].
async fn close_code(socket: &mut Socket) -> Option<u16> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the socket stayed open")
}

#[tokio::test]
async fn frames_that_send_messages_spend_the_callers_request_bucket() {
    let mut app = TestApp::spawn_with(Options {
        live: Some(LiveConfig::default()),
        limits: Some(api::limits::LimitArgs {
            rate_limit_per_second: 1,
            rate_limit_burst: 3,
            ..api::limits::LimitArgs::default()
        }),
        ..Options::default()
    })
    .await;
    app.start_pipeline().await;
    let (doctor, patient) = (doctor(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    let mut socket = connect(&app, patient).await;

    let mut statuses = Vec::new();
    for n in 0..6 {
        send(
            &mut socket,
            json!({ "type": "send_message", "chat_id": chat, "client_id": format!("f-{n}"), "body": "hi" }),
        )
        .await;
        let reply = next_reply(&mut socket).await;
        statuses.push(reply["status"].as_u64().unwrap_or(200));
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // The bucket is the one requests spend too.
    let request = app
        .send(reqwest::Method::GET, "/api/v1/chats", patient, None)
        .await;
    assert_eq!(
        request.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn one_user_holds_at_most_the_configured_number_of_sockets() {
    let config = LiveConfig {
        sockets_per_user: 2,
        ..LiveConfig::default()
    };
    let app = TestApp::spawn_live(config).await;
    let (alice, bob) = (patient(), patient());
    let first = connect(&app, alice).await;
    let _second = connect(&app, alice).await;

    let refused = tokio_tungstenite::connect_async(app.ws_url(alice)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        other => panic!("a third socket was not refused: {other:?}"),
    }
    let _bob = connect(&app, bob).await;

    drop(first);
    let mut admitted = false;
    for _ in 0..100 {
        if tokio_tungstenite::connect_async(app.ws_url(alice))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed socket did not free its place");
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_the_socket_with_message_too_big() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let mut socket = connect(&app, patient()).await;
    let body = "x".repeat(70 * 1024);
    socket
        .send(Message::Text(
            json!({ "type": "send_message", "chat_id": Uuid::new_v4(), "client_id": "big", "body": body })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1009));
}

#[tokio::test]
async fn a_new_notification_is_pushed_to_its_recipients_sockets_and_streams_only() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;
    let admin = app.enroll(admin()).await;
    let mut alices = connect(&app, alice).await;
    let mut doctors = connect(&app, doctor).await;
    let mut admins = Sse::open(&app, admin, None).await;

    // A new booking reaches the staff, not the patient who made it.
    let booking = app.booking(alice).await;
    let told = next_notification(&mut doctors).await;
    assert_eq!(told["kind"], "booking_requested", "{told}");
    assert_eq!(told["booking_id"], booking.to_string());
    assert_eq!(told["read"], false);
    let shown = admins.next_notification().await;
    assert_eq!(shown["type"], "notification");
    assert_eq!(
        (&shown["kind"], &shown["seq"]),
        (&told["kind"], &told["seq"])
    );

    // Its assignment reaches the patient, not the doctor who took it.
    let reply = app
        .post(
            &format!("/api/v1/bookings/{booking}/assign"),
            doctor,
            json!({ "doctor_id": doctor.user_id }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let told = next_notification(&mut alices).await;
    assert_eq!(told["kind"], "booking_assigned", "{told}");
    assert_eq!(told["booking_id"], booking.to_string());
    app.wait_for_projections().await;
    let feed = app
        .send(reqwest::Method::GET, "/api/v1/notifications", alice, None)
        .await;
    assert_eq!(feed.body["items"][0]["id"], told["id"], "{}", feed.body);
    assert_silent(&mut doctors, Duration::from_millis(300)).await;
}
