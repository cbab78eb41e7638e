//! Racing commands: nothing is lost, nothing is stored twice.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{patient, TestApp};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

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
        let reply = app
            .post(
                &format!("/api/v1/chats/{chat}/messages"),
                alice,
                json!({ "body": format!("m{i}") }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let snapshot: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'Chat' AND aggregate_id = $1",
    )
    .bind(chat.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(snapshot, 200);
    // A command after the snapshot still sees the whole history: seq continues.
    let reply = app
        .post(
            &format!("/api/v1/chats/{chat}/messages"),
            bob,
            json!({ "body": "and one more" }),
        )
        .await;
    assert_eq!(reply.body["seq"], 251);
}
