//! Replaying read models from the log while Herald keeps serving: the rebuilt
//! tables are swapped in atomically, no read fails meanwhile, and the result
//! equals a fresh rebuild.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin, doctor, patient, TestApp};
use domain::values::Actor;
use futures::stream::{self, StreamExt};
use projections::Projection;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// Chats, messages, reads and bookings with their lifecycle, `commands` of them.
async fn workload(app: &TestApp, chats: &[(Uuid, Actor, Actor)], commands: usize, offset: usize) {
    let admin = admin();
    stream::iter(offset..offset + commands)
        .for_each_concurrent(16, |i| {
            let (chat, patient, doctor) = chats[i % chats.len()];
            async move {
                match i % 10 {
                    0 => {
                        let booking = app.booking(patient).await;
                        let path = format!("/api/v1/bookings/{booking}");
                        if i % 3 == 0 {
                            app.post(
                                &format!("{path}/cancel"),
                                patient,
                                json!({ "reason": "better" }),
                            )
                            .await;
                        } else {
                            app.post(
                                &format!("{path}/assign"),
                                admin,
                                json!({ "doctor_id": doctor.user_id }),
                            )
                            .await;
                        }
                    }
                    1 => {
                        app.post(
                            &format!("/api/v1/chats/{chat}/read"),
                            doctor,
                            json!({ "up_to_seq": 1 }),
                        )
                        .await;
                    }
                    n => {
                        let author = if n % 2 == 0 { patient } else { doctor };
                        app.post(
                            &format!("/api/v1/chats/{chat}/messages"),
                            author,
                            json!({ "body": format!("note {i}") }),
                        )
                        .await;
                    }
                }
            }
        })
        .await;
}

/// Every read-model table's persistence, constraints and indexes, as text.
async fn read_model_schema(app: &TestApp) -> Vec<String> {
    let tables: Vec<String> = Projection::ALL
        .iter()
        .flat_map(|projection| projection.tables())
        .map(|table| format!("public.{table}"))
        .collect();
    sqlx::query_scalar(
        "SELECT c.relname || ' ' || c.relpersistence::text FROM pg_class c
          WHERE c.oid = ANY($1::regclass[])
         UNION ALL
         SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE conrelid = ANY($1::regclass[])
         UNION ALL
         SELECT indrelid::regclass || ' ' || pg_get_indexdef(indexrelid)
           FROM pg_index WHERE indrelid = ANY($1::regclass[])
         ORDER BY 1",
    )
    .bind(tables)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// What the clients running during the replay saw.
#[derive(Default)]
struct Seen {
    reads: AtomicUsize,
    failed_reads: AtomicUsize,
    writes: AtomicUsize,
}

#[tokio::test]
async fn replaying_every_projection_while_clients_read_and_write_ends_equal_to_a_rebuild_and_no_read_fails(
) {
    let app = TestApp::spawn_with_pipeline().await;
    let patients: Vec<Actor> = (0..6).map(|_| patient()).collect();
    let doctors: Vec<Actor> = (0..3).map(|_| doctor()).collect();
    let mut chats = Vec::new();
    for (i, patient) in patients.iter().enumerate() {
        let doctor = doctors[i % doctors.len()];
        chats.push((app.group_chat(*patient, &[doctor]).await, *patient, doctor));
    }
    workload(&app, &chats, 3000, 0).await;
    app.wait_for_projections().await;
    let migrated = read_model_schema(&app).await;

    let stop = AtomicBool::new(false);
    let seen = Arc::new(Seen::default());
    let admin = admin();
    let clients = async {
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            workload(&app, &chats, 20, 3000 + round * 20).await;
            seen.writes.fetch_add(20, Ordering::Relaxed);
            let (chat, patient, _) = chats[round % chats.len()];
            for (path, actor) in [
                ("/api/v1/chats".to_owned(), patient),
                (format!("/api/v1/chats/{chat}"), patient),
                (format!("/api/v1/chats/{chat}/messages?limit=50"), patient),
                ("/api/v1/bookings".to_owned(), patient),
                ("/api/v1/bookings?status=assigned".to_owned(), admin),
                ("/api/v1/dashboard/summary".to_owned(), admin),
            ] {
                let reply = app.send(Method::GET, &path, actor, None).await;
                seen.reads.fetch_add(1, Ordering::Relaxed);
                if reply.status != StatusCode::OK {
                    seen.failed_reads.fetch_add(1, Ordering::Relaxed);
                    eprintln!("GET {path} answered {}: {}", reply.status, reply.body);
                }
            }
        }
    };
    let replays = async {
        let mut reports = Vec::new();
        for projection in Projection::ALL {
            let reads_before = seen.reads.load(Ordering::Relaxed);
            let started = Instant::now();
            let report = projections::replay(&app.pool, projection, &|_, _| {})
                .await
                .unwrap();
            // Make sure clients were really at work while this one ran.
            while seen.reads.load(Ordering::Relaxed) < reads_before + 6 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!(
                "replayed {projection}: {} entries in {:?} ({:.0} events/s)",
                report.entries,
                started.elapsed(),
                report.rate()
            );
            reports.push(report);
        }
        stop.store(true, Ordering::Relaxed);
        reports
    };
    let ((), reports) = tokio::join!(clients, replays);

    assert_eq!(seen.failed_reads.load(Ordering::Relaxed), 0);
    assert!(seen.writes.load(Ordering::Relaxed) > 0);
    for report in &reports {
        assert!(report.entries >= 3000, "{report:?}");
    }
    app.wait_for_projections().await;
    for projection in Projection::ALL {
        common::assert_matches_rebuild(&app.pool, projection).await;
    }
    // The swapped-in tables are logged, with the migrations' keys, checks and
    // indexes under their names.
    assert_eq!(read_model_schema(&app).await, migrated);
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'replay\\_%' OR nspname LIKE 'retired\\_%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "shadow schemas were left behind");
}

#[tokio::test]
async fn a_read_holding_one_live_table_while_it_asks_for_another_does_not_deadlock_with_the_swap() {
    let app = TestApp::spawn_with_pipeline().await;
    let (patient, doctor) = (patient(), doctor());
    let chat = app.group_chat(patient, &[doctor]).await;
    for i in 0..5 {
        app.post(
            &format!("/api/v1/chats/{chat}/messages"),
            patient,
            json!({ "body": format!("note {i}") }),
        )
        .await;
    }
    app.wait_for_projections().await;

    // A read that has one of the chat tables and will ask for another, as a
    // query joining them does while the swap comes in.
    let mut reader = app.pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM rm_chat_members")
        .execute(&mut *reader)
        .await
        .unwrap();
    let replay = tokio::spawn({
        let pool = app.pool.clone();
        async move { projections::replay(&pool, Projection::Chats, &|_, _| {}).await }
    });
    // Give the replay time to reach its swap and, if the swap waits for
    // locks, to queue behind the read.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let swap_waits: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                             WHERE NOT granted AND relation = 'rm_chat_members'::regclass)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if swap_waits {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let chats: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_chats")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    assert_eq!(chats, 1);
    reader.commit().await.unwrap();

    let report = replay.await.unwrap().unwrap();
    assert!(report.position >= 6, "{report:?}");
    common::assert_matches_rebuild(&app.pool, Projection::Chats).await;
}

/// Every row of the chats read model, as text.
async fn chat_rows(app: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for table in Projection::Chats.tables() {
        let all: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM {table} t"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        rows.push(all);
    }
    rows
}

/// A read holding the chat tables, which keeps a chats replay from swapping
/// in until it ends, however quickly the replay rebuilds.
async fn hold_chat_tables(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut reader = app.pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM rm_chat_members")
        .execute(&mut *reader)
        .await
        .unwrap();
    reader
}

/// `herald replay args…` on the app's database, running on its own.
fn start_replay(app: &TestApp, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("replay")
        .args(args)
        .env("HERALD_DATABASE_URL", &app.database_url)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Ctrl-C to a running replay, which must then end without finishing.
fn interrupt(mut replay: std::process::Child) {
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &replay.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = replay.wait().unwrap();
    assert!(!status.success(), "the replay finished: {status:?}");
}

#[tokio::test]
async fn replay_stopped_with_ctrl_c_leaves_the_live_tables_as_they_were_and_the_next_one_finishes()
{
    let mut app = TestApp::spawn_with_pipeline().await;
    let (patient, doctor) = (patient(), doctor());
    let chat = app.group_chat(patient, &[doctor]).await;
    // More than the 2000 entries a replay applies while the workers pause.
    workload(&app, &[(chat, patient, doctor)], 2500, 0).await;
    app.wait_for_projections().await;
    app.stop_pipeline().await;
    let before = chat_rows(&app).await;
    let shadows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('replay_chats', 'retired_chats')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };

    let reader = hold_chat_tables(&app).await;
    let mut replay = start_replay(&app, &["chats"]);
    // Interrupted once it has begun its rebuild, as an operator would.
    while shadows().await == 0 {
        assert!(
            replay.try_wait().unwrap().is_none(),
            "the replay ended before it was interrupted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    interrupt(replay);
    reader.commit().await.unwrap();
    assert_eq!(chat_rows(&app).await, before);

    let report = projections::replay(&app.pool, Projection::Chats, &|_, _| {})
        .await
        .unwrap();
    assert!(report.entries >= 2500, "{report:?}");
    assert_eq!(chat_rows(&app).await, before);
    common::assert_matches_rebuild(&app.pool, Projection::Chats).await;
    assert_eq!(shadows().await, 0, "shadow schemas were left behind");
}

/// The read models `pending_replays` names.
async fn pending(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT projection FROM pending_replays ORDER BY projection")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_interrupted_after_some_read_models_swapped_in_resumes_with_the_others_only() {
    let mut app = TestApp::spawn_with_pipeline().await;
    let (patient, doctor) = (patient(), doctor());
    let chat = app.group_chat(patient, &[doctor]).await;
    workload(&app, &[(chat, patient, doctor)], 200, 0).await;
    app.wait_for_projections().await;
    app.stop_pipeline().await;
    let before = chat_rows(&app).await;
    // The chats replay cannot swap in while the payments one beside it does.
    let reader = hold_chat_tables(&app).await;
    let mut replay = start_replay(&app, &["payments", "chats"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&app).await != ["chats"] {
        assert!(Instant::now() < deadline, "{:?}", pending(&app).await);
        assert!(replay.try_wait().unwrap().is_none(), "the replay ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    interrupt(replay);
    reader.commit().await.unwrap();
    assert_eq!(chat_rows(&app).await, before);
    assert_eq!(pending(&app).await, ["chats"]);

    let resumed = common::herald_on(&app.database_url, &["replay", "--resume"]);
    assert!(resumed.status.success(), "{resumed:?}");
    let said = String::from_utf8(resumed.stdout).unwrap();
    assert!(said.starts_with("chats: "), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(pending(&app).await.is_empty());
    assert_eq!(chat_rows(&app).await, before);
    common::assert_matches_rebuild(&app.pool, Projection::Chats).await;

    let again = common::herald_on(&app.database_url, &["replay", "--resume"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        "nothing to resume: the last replay finished\n"
    );
}
