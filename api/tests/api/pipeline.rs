//! The whole pipeline under load and crashes: every committed event reaches
//! every projection exactly once in effect.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin, doctor, herald_on, patient, TestApp};
use domain::values::Actor;
use futures::stream::{self, StreamExt};
use projections::Projection;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// A mix of commands like the platform's: mostly chat messages, then reads,
/// edits, deletions, attachments, bookings and their lifecycle, and payments. Returns how
/// many were accepted.
async fn mixed_workload(app: &TestApp, commands: usize) -> usize {
    let patients: Vec<Actor> = (0..6).map(|_| patient()).collect();
    let doctors: Vec<Actor> = (0..3).map(|_| doctor()).collect();
    let admin = admin();
    let mut chats = Vec::new();
    for (i, patient) in patients.iter().enumerate() {
        chats.push((
            app.group_chat(*patient, &[doctors[i % 3]]).await,
            *patient,
            doctors[i % 3],
        ));
    }
    let accepted = stream::iter(0..commands)
        .map(|i| {
            let (chat, patient, doctor) = chats[i % chats.len()];
            async move {
                let reply = match i % 20 {
                    0 => {
                        let booking = app.booking(patient).await;
                        let path = format!("/api/v1/bookings/{booking}");
                        match i % 3 {
                            0 => {
                                app.post(
                                    &format!("{path}/cancel"),
                                    patient,
                                    json!({ "reason": "better" }),
                                )
                                .await
                            }
                            1 => {
                                app.post(
                                    &format!("{path}/assign"),
                                    admin,
                                    json!({ "doctor_id": doctor.user_id }),
                                )
                                .await;
                                app.post(&format!("{path}/complete"), doctor, json!({}))
                                    .await
                            }
                            _ => {
                                app.post(
                                    "/api/v1/payments",
                                    patient,
                                    json!({ "booking_id": booking, "method": "sbp" }),
                                )
                                .await
                            }
                        }
                    }
                    1 => {
                        app.post(
                            &format!("/api/v1/chats/{chat}/read"),
                            doctor,
                            json!({ "up_to_seq": 1 }),
                        )
                        .await
                    }
                    2 => {
                        let sent = app
                            .post(
                                &format!("/api/v1/chats/{chat}/messages"),
                                patient,
                                json!({ "body": "to edit" }),
                            )
                            .await;
                        let message = sent.id();
                        if i % 3 == 0 {
                            app.send(
                                reqwest::Method::DELETE,
                                &format!("/api/v1/chats/{chat}/messages/{message}"),
                                patient,
                                None,
                            )
                            .await
                        } else {
                            app.send(
                                reqwest::Method::PATCH,
                                &format!("/api/v1/chats/{chat}/messages/{message}"),
                                patient,
                                Some(json!({ "body": "edited" })),
                            )
                            .await
                        }
                    }
                    3 => {
                        let file = format!("file {i}");
                        let id =
                            crate::attachments::uploaded(app, chat, patient, file.as_bytes()).await;
                        app.post(
                            &format!("/api/v1/chats/{chat}/messages"),
                            patient,
                            json!({ "attachments": [id] }),
                        )
                        .await
                    }
                    n => {
                        let author = if n % 2 == 0 { patient } else { doctor };
                        app.post(
                            &format!("/api/v1/chats/{chat}/messages"),
                            author,
                            json!({ "body": format!("note {i}") }),
                        )
                        .await
                    }
                };
                reply.status.is_success()
            }
        })
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert!(
        accepted > commands * 9 / 10,
        "only {accepted} of {commands} accepted"
    );
    accepted
}

#[tokio::test]
async fn after_thousands_of_mixed_commands_every_read_model_equals_a_rebuild_from_the_log() {
    let app = TestApp::spawn_with_pipeline().await;
    mixed_workload(&app, 2000).await;
    app.wait_for_projections().await;
    for projection in Projection::ALL {
        common::assert_matches_rebuild(&app.pool, projection).await;
    }
    common::assert_complete_and_ordered(
        &common::stream_entries(&app.topology).await,
        &app.event_ids().await,
    );
}

#[tokio::test]
async fn the_projections_of_one_process_all_follow_the_stream_through_one_consumer() {
    let app = TestApp::spawn_with_pipeline().await;
    mixed_workload(&app, 200).await;
    app.wait_for_projections().await;
    let client = herald_nats::connect(&common::nats_url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(app.topology.stream_name())
        .await
        .unwrap();
    let consumers = stream.info().await.unwrap().state.consumer_count;
    assert_eq!(
        consumers,
        1,
        "one consumer for {} projections",
        Projection::ALL.len()
    );
}

#[tokio::test]
async fn every_kind_of_chat_event_rebuilds_into_the_rows_the_live_worker_wrote() {
    use common::{delete, patch, post};
    let mut app = TestApp::spawn_with_pipeline().await;
    // It makes the thumbnails of images.
    app.start_process_manager().await;
    let (alice, bob, carol, dan) = (patient(), doctor(), patient(), patient());
    for someone in [carol, dan] {
        app.enroll(someone).await;
    }
    let ward = app.group_chat(alice, &[bob, carol]).await;
    let messages = format!("/api/v1/chats/{ward}/messages");
    let send = |author: Actor, body: &str| {
        let call = post(&messages, json!({ "body": body }));
        let app = &app;
        async move {
            app.accepts(author, call, StatusCode::CREATED)
                .await
                .reply
                .id()
        }
    };
    let ok = |actor: Actor, call: common::Call| {
        let app = &app;
        async move { app.accepts(actor, call, StatusCode::OK).await }
    };
    let read = |up_to_seq: u64| {
        post(
            format!("/api/v1/chats/{ward}/read"),
            json!({ "up_to_seq": up_to_seq }),
        )
    };
    let edit = |id: Uuid, body: &str| patch(format!("{messages}/{id}"), json!({ "body": body }));
    let retract = |id: Uuid| delete(format!("{messages}/{id}"));
    let add = |who: Actor| {
        post(
            format!("/api/v1/chats/{ward}/members"),
            json!({ "user_id": who.user_id }),
        )
    };
    let leave = |who: Actor| delete(format!("/api/v1/chats/{ward}/members/{}", who.user_id));

    let first = send(alice, "one").await;
    let second = send(bob, "two").await;
    ok(carol, read(1)).await;
    let third = send(alice, "three").await;
    // An edit of an older message, then of the newest, which the preview shows.
    ok(bob, edit(second, "two, edited")).await;
    ok(alice, edit(third, "three, edited")).await;
    // Someone joins after messages were sent, and reads some of them.
    ok(alice, add(dan)).await;
    ok(dan, read(2)).await;
    // The newest message retracted: the preview goes back to the one before.
    ok(alice, retract(third)).await;
    // Someone leaves and comes back, with nothing read.
    ok(carol, leave(carol)).await;
    ok(alice, add(carol)).await;
    let fourth = send(carol, "four").await;
    ok(bob, read(4)).await;
    ok(carol, retract(fourth)).await;
    ok(alice, retract(first)).await;
    send(dan, "five").await;
    ok(alice, read(5)).await;
    // Attachments: two carried by a message without text, in the order
    // given; one by a message retracted after, so the preview goes back to
    // the message without text; one announced and never sent.
    let (scan, photo) = (
        crate::attachments::uploaded(&app, ward, dan, b"scan").await,
        crate::attachments::uploaded(&app, ward, dan, &crate::attachments::png(40, 30)).await,
    );
    // Sent plainly, and its thumbnail awaited: Herald's own command follows
    // it, which `accepts` would take for the caller's.
    let files = json!({ "attachments": [photo, scan] });
    let reply = app.post(&messages, dan, files).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .events_after(0)
        .await
        .iter()
        .all(|e| e.event_type != "ThumbnailRecorded")
    {
        assert!(Instant::now() < deadline, "no thumbnail was recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let note = crate::attachments::uploaded(&app, ward, alice, b"note").await;
    crate::attachments::uploaded(&app, ward, alice, b"draft").await;
    let with_file = json!({ "body": "with a file", "attachments": [note] });
    let sent = app
        .accepts(alice, post(&messages, with_file), StatusCode::CREATED)
        .await;
    ok(alice, retract(sent.reply.id())).await;
    // A chat whose newest message was retracted last, one whose only message
    // was, and one with none at all.
    for kept in [Some("kept"), None] {
        let other = app.group_chat(bob, &[alice]).await;
        let path = format!("/api/v1/chats/{other}/messages");
        for body in kept.into_iter().chain(["gone"]) {
            let sent = app
                .accepts(
                    bob,
                    post(&path, json!({ "body": body })),
                    StatusCode::CREATED,
                )
                .await;
            if body == "gone" {
                ok(bob, delete(format!("{path}/{}", sent.reply.id()))).await;
            }
        }
    }
    app.group_chat(dan, &[carol]).await;

    app.wait_for_projections().await;
    common::assert_matches_rebuild(&app.pool, Projection::Chats).await;
}

/// Every read model's rows, each table as one JSON array in a fixed order.
async fn read_models(pool: &sqlx::PgPool) -> Vec<(String, Value)> {
    let mut tables = Vec::new();
    for projection in Projection::ALL {
        for table in projection.tables() {
            let rows: Value = sqlx::query_scalar(&format!(
                "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]')
                   FROM {table} t"
            ))
            .fetch_one(pool)
            .await
            .unwrap();
            tables.push(((*table).to_owned(), rows));
        }
    }
    tables
}

#[tokio::test]
async fn a_log_exported_under_load_and_imported_elsewhere_rebuilds_every_read_model_and_goes_on() {
    let app = TestApp::spawn_with_payments().await;
    mixed_workload(&app, 600).await;
    crate::payment_flow::paid_through_the_sandbox(&app).await;
    app.wait_for_projections().await;
    let export = herald_on(&app.database_url, &["events", "export"]);
    assert!(export.status.success(), "{export:?}");
    let file = std::env::temp_dir().join(format!("herald-drill-{}.ndjson", Uuid::new_v4()));
    std::fs::write(&file, &export.stdout).unwrap();

    let target = common::fresh_database().await;
    let _leftovers = common::Leftovers::new(Some(target.clone()), None);
    let migrated = herald_on(&target, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let imported = herald_on(&target, &["events", "import", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(imported.status.success(), "{imported:?}");
    let head = String::from_utf8(imported.stdout).unwrap();

    let mut restored = TestApp::spawn_with(common::Options {
        database_url: Some(target.clone()),
        ..common::Options::default()
    })
    .await;
    restored.start_pipeline().await;
    restored.wait_for_projections().await;
    let original = read_models(&app.pool).await;
    assert!(original.iter().all(|(_, rows)| rows != &json!([])));
    assert_eq!(read_models(&restored.pool).await, original);

    // The restored log takes new commands, continuing each aggregate and
    // both chains.
    let (chat, member): (Uuid, Uuid) =
        sqlx::query_as("SELECT chat_id, user_id FROM rm_chat_members LIMIT 1")
            .fetch_one(&restored.pool)
            .await
            .unwrap();
    let sent = restored
        .post(
            &format!("/api/v1/chats/{chat}/messages"),
            Actor::new(member, domain::values::Role::Patient),
            json!({ "body": "after the restore" }),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    restored.wait_for_projections().await;
    let verified = herald_on(&target, &["audit", "verify", "--expect", head.trim()]);
    assert!(verified.status.success(), "{verified:?}");
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(
        report["events_checked"],
        json!(app.event_count().await + 1),
        "{report}"
    );
}

/// Where the `herald` processes of a test write their logs.
fn log_file(app: &TestApp) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("herald-{}.log", app.topology.prefix()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// A `herald` process of its own, killed with SIGKILL when dropped or asked.
struct Herald(Child);

impl Herald {
    fn start(app: &TestApp, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_DATABASE_URL", &app.database_url)
            .env("HERALD_NATS_URL", common::nats_url())
            .env("HERALD_NATS_PREFIX", app.topology.prefix())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(app))
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `workload` while a `herald` process with `args` is SIGKILLed and
/// restarted every few hundred milliseconds, then leaves one running.
async fn kill_repeatedly_during(
    app: &TestApp,
    args: &[&str],
    workload: impl std::future::Future<Output = usize>,
) -> Herald {
    let killer = async {
        for round in 0..8u64 {
            let process = Herald::start(app, args);
            tokio::time::sleep(Duration::from_millis(250 + 70 * round)).await;
            process.kill();
        }
    };
    let (accepted, ()) = tokio::join!(workload, killer);
    assert!(accepted > 0);
    Herald::start(app, args)
}

#[tokio::test]
async fn a_relay_killed_again_and_again_under_load_publishes_every_event_exactly_once() {
    let app = TestApp::spawn().await;
    let _relay = kill_repeatedly_during(&app, &["relay"], mixed_workload(&app, 800)).await;

    let committed = app.event_ids().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if common::stream_entries(&app.topology).await.len() >= committed.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::assert_complete_and_ordered(&common::stream_entries(&app.topology).await, &committed);
}

#[tokio::test]
async fn projection_workers_killed_again_and_again_mid_batch_lose_and_double_apply_nothing() {
    let mut app = TestApp::spawn().await;
    let _relay = Herald::start(&app, &["relay"]);
    let workers = kill_repeatedly_during(&app, &["project"], mixed_workload(&app, 800)).await;
    app.wait_for_projections().await;
    for projection in Projection::ALL {
        common::assert_matches_rebuild(&app.pool, projection).await;
    }
    workers.kill();
    app.stop_pipeline().await;
}

#[tokio::test]
async fn a_read_model_catches_up_after_its_worker_was_down() {
    let mut app = TestApp::spawn_with_pipeline().await;
    let alice = patient();
    let chat = app.group_chat(alice, &[doctor()]).await;
    app.stop_pipeline().await;

    let sent = app
        .post(
            &format!("/api/v1/chats/{chat}/messages"),
            alice,
            json!({ "body": "while away" }),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED);
    app.start_pipeline().await;
    let token = sent.body["consistency"].as_str().unwrap();
    let page = app
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{chat}/messages?consistency={token}"),
            alice,
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body["items"][0]["id"], json!(sent.id()));
}

#[tokio::test]
async fn a_message_whose_id_another_chat_holds_is_a_dead_letter_not_a_message_left_out() {
    let app = TestApp::spawn_with_pipeline().await;
    let alice = patient();
    let ward = app.group_chat(alice, &[doctor()]).await;
    let other = app.group_chat(alice, &[doctor()]).await;
    let first = app
        .post(
            &format!("/api/v1/chats/{ward}/messages"),
            alice,
            json!({ "body": "first" }),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    // A log written before message ids were unique: the other chat's first
    // message reuses the id.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_claim_message_id")
        .execute(&app.pool)
        .await
        .unwrap();
    let payload = json!({ "MessageSent": {
        "message_id": first.id(),
        "seq": 1,
        "author": alice.user_id,
        "body": "same id",
        "sent_at": "2026-11-30T12:00:00Z",
    }});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Chat', $1, 2, 'MessageSent', '1', $2, '{}')",
    )
    .bind(other.to_string())
    .bind(payload)
    .execute(&app.pool)
    .await
    .unwrap();

    app.wait_for_projections().await;
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT projection, error FROM projection_dead_letters")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "chats");
    assert!(dead[0].1.contains("duplicate key"), "{}", dead[0].1);
}

#[tokio::test]
async fn a_poison_event_is_set_aside_as_a_dead_letter_and_the_projection_goes_on() {
    let app = TestApp::spawn_with_pipeline().await;
    let alice = patient();
    let chat = app.group_chat(alice, &[doctor()]).await;
    common::poison_the_chats(&app.pool).await;
    let sent = app
        .post(
            &format!("/api/v1/chats/{chat}/messages"),
            alice,
            json!({ "body": "after the poison" }),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED);

    app.wait_for_projections().await;
    // Each projection that reads chat messages sets it aside on its own.
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT projection, error FROM projection_dead_letters ORDER BY projection")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        (dead[0].0.as_str(), dead[1].0.as_str()),
        ("activity", "chats")
    );
    assert!(
        dead.iter().all(|(_, error)| error.contains("MessageSent")),
        "{dead:?}"
    );
    let token = sent.body["consistency"].as_str().unwrap();
    let page = app
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{chat}/messages?consistency={token}"),
            alice,
            None,
        )
        .await;
    assert_eq!(page.body["items"][0]["body"], "after the poison");
    assert_eq!(
        projections::retry_dead_letters(&app.pool, Projection::Chats)
            .await
            .unwrap(),
        (0, 1),
        "a poison event stays poison"
    );
}
