//! Presence and typing indicators, across Herald instances sharing one
//! database, one stream and one NATS.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use api::live::LiveConfig;
use chrono::{DateTime, Utc};
use domain::values::Actor;
use herald_nats::Topology;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;
use crate::live::{assert_silent, connect, connect_to, next_of, next_reply, send, Socket, Sse};

/// The time-to-live of presence in these tests: short, yet long enough for
/// heartbeats to keep up on a loaded machine.
const TTL: Duration = Duration::from_secs(3);

fn config() -> LiveConfig {
    LiveConfig {
        presence_ttl: TTL,
        ..LiveConfig::default()
    }
}

/// A Herald instance in a runtime of its own, so that it can die as a killed
/// process does: its tasks dropped wherever they wait, nothing cleaned up.
struct Doomed {
    runtime: Option<tokio::runtime::Runtime>,
    address: String,
}

impl Doomed {
    /// An instance (API and live hub) on the database and stream of `app`.
    async fn beside(app: &TestApp) -> Self {
        let (database_url, topology) = (app.database_url.clone(), app.topology.clone());
        tokio::task::spawn_blocking(move || Self::start(&database_url, &topology))
            .await
            .unwrap()
    }

    fn start(database_url: &str, topology: &Topology) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = runtime.block_on(TestApp::spawn_live_on(database_url, topology, config()));
        let address = app.address.clone();
        // Never shut down: it dies with its runtime.
        std::mem::forget(app);
        Self {
            runtime: Some(runtime),
            address,
        }
    }

    /// Its WebSocket URL for `actor`, with a token minted by `app`, which
    /// signs with the same secret.
    fn ws_url(&self, app: &TestApp, actor: Actor) -> String {
        format!(
            "{}/api/v1/ws?token={}",
            self.address.replacen("http://", "ws://", 1),
            app.token(actor)
        )
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `member`'s presence as `GET /chats/{chat}` shows it to `reader`.
async fn shown_presence(app: &TestApp, chat: Uuid, reader: Actor, member: Actor) -> Value {
    let reply = app
        .send(Method::GET, &format!("/api/v1/chats/{chat}"), reader, None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["member_presence"][member.user_id.to_string()].clone()
}

/// The next presence frame about `user`.
async fn next_presence_of(socket: &mut Socket, user: Actor) -> Value {
    loop {
        let frame = next_of(socket, "presence").await;
        if frame["user_id"] == user.user_id.to_string() {
            return frame;
        }
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn someone_connected_to_an_instance_that_dies_goes_offline_for_their_co_members_within_the_ttl(
) {
    let b = TestApp::spawn_live(config()).await;
    let mut a = Doomed::beside(&b).await;
    let (doctor, patient) = (doctor(), patient());
    let stranger = b.enroll(crate::common::patient()).await;
    let chat = b.group_chat(doctor, &[patient]).await;
    b.wait_for_projections().await;
    let mut doctors = connect(&b, doctor).await;
    let mut strangers = connect(&b, stranger).await;

    let _patients = connect_to(&a.ws_url(&b, patient)).await;
    let online = next_presence_of(&mut doctors, patient).await;
    assert_eq!(online["online"], true, "{online}");
    assert_eq!(online["last_seen_at"], Value::Null, "{online}");
    let shown = shown_presence(&b, chat, doctor, patient).await;
    assert_eq!(shown, json!({ "online": true, "last_seen_at": null }));

    a.kill();
    let killed = Instant::now();
    let offline = next_presence_of(&mut doctors, patient).await;
    let took = killed.elapsed();
    assert_eq!(offline["online"], false, "{offline}");
    assert!(
        took <= TTL + Duration::from_secs(1),
        "offline only after {took:?}"
    );
    let last_seen = time(&offline["last_seen_at"]);
    assert!(last_seen <= Utc::now(), "{offline}");
    assert!(
        Utc::now() - last_seen <= chrono::Duration::seconds(10),
        "{offline}"
    );

    let shown = shown_presence(&b, chat, doctor, patient).await;
    assert_eq!(shown["online"], false, "{shown}");
    let shown_seen = time(&shown["last_seen_at"]);
    assert!(
        (shown_seen - last_seen).abs() < chrono::Duration::seconds(1),
        "{shown} against {offline}"
    );
    // Someone who shares no chat with the patient heard of neither change.
    assert_silent(&mut strangers, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn someone_connected_to_two_instances_stays_online_while_one_of_them_dies() {
    let b = TestApp::spawn_live(config()).await;
    let mut a = Doomed::beside(&b).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = b.group_chat(doctor, &[patient]).await;
    b.wait_for_projections().await;
    let mut doctors = connect(&b, doctor).await;
    let _on_a = connect_to(&a.ws_url(&b, patient)).await;
    let _on_b = connect(&b, patient).await;
    assert_eq!(
        next_presence_of(&mut doctors, patient).await["online"],
        true
    );

    a.kill();
    // Past the time-to-live of A's key, the patient is still online.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let shown = shown_presence(&b, chat, doctor, patient).await;
    assert_eq!(shown["online"], true, "{shown}");
    assert_silent(&mut doctors, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_instance_shut_down_gracefully_takes_its_users_offline_at_once_not_a_ttl_later() {
    let long = LiveConfig {
        presence_ttl: Duration::from_secs(60),
        ..LiveConfig::default()
    };
    let b = TestApp::spawn_live(long.clone()).await;
    let mut a = TestApp::spawn_live_on(&b.database_url, &b.topology, long).await;
    let (doctor, patient) = (doctor(), patient());
    b.group_chat(doctor, &[patient]).await;
    b.wait_for_projections().await;
    let mut doctors = connect(&b, doctor).await;
    let _patients = connect(&a, patient).await;
    assert_eq!(
        next_presence_of(&mut doctors, patient).await["online"],
        true
    );

    a.shut_down().await;
    let offline = next_presence_of(&mut doctors, patient).await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["last_seen_at"].is_string(), "{offline}");
}

#[tokio::test]
async fn closing_the_last_socket_shows_its_user_offline_at_once_and_only_to_co_members() {
    let app = TestApp::spawn_live(config()).await;
    let (doctor, patient) = (doctor(), patient());
    let stranger = app.enroll(crate::common::patient()).await;
    let admin = app.enroll(admin()).await;
    let chat = app.group_chat(doctor, &[patient]).await;
    app.wait_for_projections().await;
    let mut doctors = connect(&app, doctor).await;
    let mut strangers = connect(&app, stranger).await;

    let patients = connect(&app, patient).await;
    assert_eq!(
        next_presence_of(&mut doctors, patient).await["online"],
        true
    );
    drop(patients);
    let offline = next_presence_of(&mut doctors, patient).await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["last_seen_at"].is_string(), "{offline}");

    // An admin sees presence in any chat; someone outside it sees no chat.
    let shown = shown_presence(&app, chat, admin, patient).await;
    assert_eq!(shown["online"], false, "{shown}");
    assert!(shown["last_seen_at"].is_string(), "{shown}");
    let hidden = app
        .send(
            Method::GET,
            &format!("/api/v1/chats/{chat}"),
            stranger,
            None,
        )
        .await;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    assert_silent(&mut strangers, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_member_who_comes_and_goes_again_on_another_instance_is_shown_last_seen_at_their_latest_leaving(
) {
    let b = TestApp::spawn_live(config()).await;
    let a = TestApp::spawn_live_on(&b.database_url, &b.topology, config()).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = b.group_chat(doctor, &[patient]).await;
    b.wait_for_projections().await;
    let mut doctors = connect(&b, doctor).await;

    let mut leavings = Vec::new();
    for _ in 0..2 {
        let patients = connect(&a, patient).await;
        assert_eq!(
            next_presence_of(&mut doctors, patient).await["online"],
            true
        );
        let online = shown_presence(&b, chat, doctor, patient).await;
        assert_eq!(online, json!({ "online": true, "last_seen_at": null }));
        // Seconds apart, so that the two leavings have different times.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        drop(patients);
        let offline = next_presence_of(&mut doctors, patient).await;
        assert_eq!(offline["online"], false, "{offline}");
        // Read twice: the second read answers as the first did.
        for _ in 0..2 {
            let shown = shown_presence(&b, chat, doctor, patient).await;
            assert_eq!(shown["online"], false, "{shown}");
            let (shown_seen, heard) =
                (time(&shown["last_seen_at"]), time(&offline["last_seen_at"]));
            assert!(
                (shown_seen - heard).abs() < chrono::Duration::seconds(1),
                "{shown} against {offline}"
            );
        }
        leavings.push(time(
            &shown_presence(&b, chat, doctor, patient).await["last_seen_at"],
        ));
    }
    assert!(
        leavings[1] - leavings[0] >= chrono::Duration::seconds(1),
        "last seen {leavings:?}"
    );
}

#[tokio::test]
async fn an_open_sse_stream_keeps_its_user_online_like_a_socket() {
    let app = TestApp::spawn_live(config()).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    app.wait_for_projections().await;
    let mut doctors = connect(&app, doctor).await;

    let _stream = Sse::open(&app, patient, None).await;
    let online = next_presence_of(&mut doctors, patient).await;
    assert_eq!(online["online"], true, "{online}");
    let shown = shown_presence(&app, chat, doctor, patient).await;
    assert_eq!(shown["online"], true, "{shown}");
}

#[tokio::test]
async fn typing_reaches_the_other_members_on_every_instance_and_not_the_typist() {
    let a = TestApp::spawn_live(LiveConfig::default()).await;
    let b = TestApp::spawn_live_on(&a.database_url, &a.topology, LiveConfig::default()).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = a.group_chat(doctor, &[patient]).await;
    // Sockets know their chats from the log: wait until the chat reached it.
    a.wait_for_projections().await;
    let mut doctors = connect(&a, doctor).await;
    let mut patients = connect(&b, patient).await;
    let mut patients_other_tab = connect(&a, patient).await;

    let before = a.event_count().await;
    send(&mut patients, json!({ "type": "typing", "chat_id": chat })).await;
    let typing = next_of(&mut doctors, "typing").await;
    assert_eq!(
        typing,
        json!({ "type": "typing", "chat_id": chat, "user_id": patient.user_id })
    );
    // Not stored, and not echoed to the typist on any socket.
    assert_eq!(a.event_count().await, before, "typing stored an event");
    for socket in [&mut patients, &mut patients_other_tab] {
        let quiet = tokio::time::timeout(Duration::from_millis(300), next_of(socket, "typing"));
        assert!(quiet.await.is_err(), "the typist heard their own typing");
    }
}

#[tokio::test]
async fn typing_in_a_chat_one_is_not_a_member_of_is_refused_and_reaches_nobody() {
    let app = TestApp::spawn_live(LiveConfig::default()).await;
    let (doctor, patient, stranger) = (doctor(), patient(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    let mut doctors = connect(&app, doctor).await;
    let mut strangers = connect(&app, stranger).await;

    send(&mut strangers, json!({ "type": "typing", "chat_id": chat })).await;
    let error = next_reply(&mut strangers).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["status"], 403, "{error}");
    let quiet = tokio::time::timeout(Duration::from_millis(500), next_of(&mut doctors, "typing"));
    assert!(quiet.await.is_err(), "a stranger's typing was delivered");

    // An unknown chat is refused alike.
    send(
        &mut strangers,
        json!({ "type": "typing", "chat_id": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(next_reply(&mut strangers).await["status"], 403);
}

#[tokio::test]
async fn typing_is_paced_to_one_indicator_per_user_and_chat_per_interval() {
    let config = LiveConfig {
        typing_interval: Duration::from_secs(1),
        ..LiveConfig::default()
    };
    let app = TestApp::spawn_live(config).await;
    let (doctor, patient) = (doctor(), patient());
    let chat = app.group_chat(doctor, &[patient]).await;
    // Sockets know their chats from the log: wait until the chat reached it.
    app.wait_for_projections().await;
    let mut doctors = connect(&app, doctor).await;
    let mut patients = connect(&app, patient).await;

    for _ in 0..5 {
        send(&mut patients, json!({ "type": "typing", "chat_id": chat })).await;
    }
    next_of(&mut doctors, "typing").await;
    // The first was let through before it arrived here.
    let first = Instant::now();
    let quiet = tokio::time::timeout(Duration::from_millis(400), next_of(&mut doctors, "typing"));
    assert!(quiet.await.is_err(), "more than one indicator in a second");
    // The extra ones were dropped without a word.
    let answered = tokio::time::timeout(Duration::from_millis(100), next_reply(&mut patients));
    assert!(answered.await.is_err(), "a dropped indicator was answered");

    let interval_over = Duration::from_millis(1100);
    tokio::time::sleep(interval_over.saturating_sub(first.elapsed())).await;
    send(&mut patients, json!({ "type": "typing", "chat_id": chat })).await;
    assert_eq!(
        next_of(&mut doctors, "typing").await["user_id"],
        patient.user_id.to_string()
    );
}
