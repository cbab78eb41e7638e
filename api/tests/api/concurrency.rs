//! Racing commands: nothing is lost, nothing is stored twice.
#![allow(clippy::unwrap_used)]

use crate::common;

use api::config::DatabaseArgs;
use chrono::Utc;
use commands::{CommandError, Metadata, NewId, WriteSide};
use common::{patient, TestApp};
use domain::chat::{Chat, ChatCommand};
use domain::values::{Actor, ChatKind};
use domain::DomainError;
use futures::future::join_all;
use futures::FutureExt;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn sixty_four_concurrent_sends_into_one_chat_all_succeed_with_contiguous_seqs() {
    let app = TestApp::spawn().await;
    let members: Vec<_> = (0..4).map(|_| patient()).collect();
    let chat = app.group_chat(members[0], &members[1..]).await;

    let sends = (0..64).map(|i| {
        let author = members[i % members.len()];
        let app = &app;
        async move {
            app.post(
                &format!("/api/v1/chats/{chat}/messages"),
                author,
                json!({ "body": format!("message {i}") }),
            )
            .await
        }
    });
    let replies = join_all(sends).await;

    let mut seqs: Vec<u64> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            reply.body["seq"].as_u64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=64).collect::<Vec<u64>>());
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'MessageSent'",
    )
    .bind(chat.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 64);
}

#[tokio::test]
async fn commands_racing_from_two_herald_processes_on_one_chat_lose_no_update() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(&first.database_url).await;
    let (alice, bob) = (patient(), patient());
    let chat = first.group_chat(alice, &[bob]).await;

    let sends = (0..40).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        let author = if i % 2 == 0 { alice } else { bob };
        async move {
            app.post(
                &format!("/api/v1/chats/{chat}/messages"),
                author,
                json!({ "body": format!("hello {i}") }),
            )
            .await
        }
    });
    let replies = join_all(sends).await;
    let accepted = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    for reply in &replies {
        assert!(
            reply.status == StatusCode::CREATED || reply.status == StatusCode::CONFLICT,
            "{}",
            reply.body
        );
    }
    let sequences: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(chat.to_string())
            .fetch_all(&first.pool)
            .await
            .unwrap();
    assert_eq!(sequences, (1..=(accepted as i64 + 1)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_busy_chat_is_snapshotted_so_it_loads_from_its_latest_snapshot() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), patient());
    let chat = app.group_chat(alice, &[bob]).await;
    for i in 0..250 {
        app.message(chat, alice, &format!("m{i}")).await;
    }
    let snapshot: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'Chat' AND aggregate_id = $1",
    )
    .bind(chat.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(snapshot, 200);
    // Another process loads the chat from the snapshot and the events after
    // it: it sees the whole history, so the seq continues.
    let other = TestApp::spawn_on(&app.database_url).await;
    assert_eq!(message(&other, chat, bob, "and one more").await, 251);
}

#[tokio::test]
async fn a_snapshot_that_no_longer_fits_the_chat_is_passed_over_for_its_events() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), patient());
    let chat = app.group_chat(alice, &[bob]).await;
    for i in 0..120 {
        app.message(chat, alice, &format!("m{i}")).await;
    }
    sqlx::query("UPDATE snapshots SET payload = '{\"shape\": \"of an older Herald\"}'")
        .execute(&app.pool)
        .await
        .unwrap();

    let other = TestApp::spawn_on(&app.database_url).await;
    assert_eq!(message(&other, chat, bob, "still counted").await, 121);
}

/// `author` sends `body` into `chat` through `app`; the message's seq.
async fn message(app: &TestApp, chat: Uuid, author: Actor, body: &str) -> u64 {
    app.message(chat, author, body).await.body["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_chat_another_process_wrote_to_is_reloaded_and_the_command_decided_afresh() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(&first.database_url).await;
    let (alice, bob) = (patient(), patient());
    let carol = first.enroll(patient()).await;
    let chat = first.group_chat(alice, &[bob]).await;
    assert_eq!(message(&first, chat, alice, "from the first").await, 1);

    // The second process moves the chat on behind the first one's back.
    assert_eq!(message(&second, chat, bob, "from the second").await, 2);
    let added = second
        .post(
            &format!("/api/v1/chats/{chat}/members"),
            alice,
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);

    // The first process's copy says carol is no member: it must not refuse
    // her on that word, and must number her message after bob's.
    assert_eq!(message(&first, chat, carol, "from carol").await, 3);
    assert_eq!(message(&first, chat, alice, "and alice").await, 4);
}

#[tokio::test]
async fn a_command_that_conflicts_inside_a_group_commit_retries_alone_and_its_neighbours_commit() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(&first.database_url).await;
    let (alice, bob) = (patient(), patient());
    let contested = first.group_chat(alice, &[bob]).await;
    message(&first, contested, alice, "cached by the first").await;
    let mut quiet = Vec::new();
    for _ in 0..16 {
        quiet.push(first.group_chat(alice, &[bob]).await);
    }
    // Taken by the second process, so the first one's next append of the
    // contested chat reuses a version and fails inside whatever batch it joins.
    message(&second, contested, bob, "taken by the second").await;

    let sends = quiet
        .iter()
        .map(|&chat| message(&first, chat, alice, "neighbour"))
        .chain([message(&first, contested, alice, "contested")]);
    let seqs = join_all(sends).await;

    assert!(seqs[..16].iter().all(|&seq| seq == 1), "{seqs:?}");
    assert_eq!(seqs[16], 3);
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(contested.to_string())
            .fetch_all(&first.pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_minted_id_the_log_already_holds_is_decided_again_on_what_the_log_holds() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), patient());
    let chat = app.group_chat(alice, &[bob]).await;
    // A process that has never seen the chat, told its id was just minted.
    let fresh = WriteSide::new(app.pool.clone());
    let create = ChatCommand::Create {
        actor: bob,
        chat_id: chat,
        kind: ChatKind::Group,
        title: None,
        members: vec![],
        at: Utc::now(),
    };
    let metadata = Metadata::for_request(bob, "minted-twice");

    let refused = fresh
        .create::<Chat>(NewId::Minted(chat), create, &metadata)
        .await;

    assert!(
        matches!(
            refused,
            Err(CommandError::Rejected(DomainError::ChatAlreadyExists))
        ),
        "{refused:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(chat.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_transaction_dropped_while_it_begins_leaves_its_pooled_connection_outside_any_transaction(
) {
    let app = TestApp::spawn().await;
    // One connection, so the pool hands the same one out again.
    let pool = api::db::existing_pool(&DatabaseArgs {
        database_url: app.database_url.clone(),
        database_pool_size: 1,
    })
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // Polled once, the `BEGIN` is on its way; the future is then dropped
    // before Postgres answers, as a request's is when its client goes away.
    // On a busy machine the answer may already be there when it is polled:
    // that transaction is begun and dropped, and the next one tried.
    let dropped_in_flight =
        (0..100).any(|_| sqlx::Connection::begin(&mut *conn).now_or_never().is_none());
    assert!(dropped_in_flight, "Postgres answered every BEGIN at once");
    drop(conn);

    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        state, "idle",
        "the pool gave out a connection still in the dropped transaction"
    );
}
