//! The verifier reads the log in batches, side by side, and its documents as
//! Postgres prints them, not as the relay hashed them: whatever the batches
//! and the documents, it finds what the relay linked, and names the first
//! entry changed.
#![allow(clippy::unwrap_used)]

use herald_nats::log::chain;
use herald_nats::testing as support;
use herald_nats::Topology;
use serde_json::json;
use sqlx::PgPool;

/// Runs a relay until it has numbered, linked and published `count` events.
async fn relay_all(pool: &PgPool, topology: &Topology, count: i64) {
    let (relay, _stop) = support::start_relay(pool, topology).await;
    support::wait_until_published(&relay, count).await;
}

#[tokio::test]
async fn a_log_of_unusual_json_verifies_as_the_relay_hashed_it() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let documents = [
        json!({"b": 1, "a": {"d": [1, 2, {"y": null, "x": true}], "c": "é\n\"\\\u{1f}\t😀"}}),
        json!({"ab!": 1, "ab": 2, "a": 3, "": 4, "k\"ey": 5, "tab\tkey": 6}),
        json!([
            [],
            {},
            "",
            0,
            -7,
            1.10,
            0.1,
            1e3,
            2E-2,
            123456789012345678u64,
            1234567890123456789u64
        ]),
        json!({"MessageSent": {"body": "line one\r\nline \u{7f} two </script>", "n": -0.0}}),
        json!({"big": 18446744073709551615u64, "small": -9223372036854775808i64, "f": 1.5e300}),
    ];
    for (sequence, document) in (1..).zip(&documents) {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('Chat', 'odd', $1, 'MessageSent', '1', $2, $2)",
        )
        .bind(sequence)
        .bind(document)
        .execute(&pool)
        .await
        .unwrap();
    }
    relay_all(&pool, &topology, documents.len() as i64).await;

    let verification = chain::verify(&pool, None, |_, _| {}).await.unwrap();
    assert!(verification.ok, "{verification:?}");
    assert_eq!(verification.events_checked, documents.len() as i64);
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn a_changed_entry_is_named_wherever_it_falls_among_the_batches_read() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    // 12 000 events over 40 chats, interleaved, so most chats' events run
    // across the batches the verifier reads.
    let events: i64 = 12_000;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Chat', 'chat-' || (n % 40), n / 40 + 1, 'MessageSent', '1',
                jsonb_build_object('MessageSent', jsonb_build_object('body', 'message ' || n)), '{}'
           FROM generate_series(0, $1 - 1) AS n",
    )
    .bind(events)
    .execute(&pool)
    .await
    .unwrap();
    relay_all(&pool, &topology, events).await;
    let intact = chain::verify(&pool, None, |_, _| {}).await.unwrap();
    assert!(intact.ok, "{intact:?}");
    assert_eq!(intact.events_checked, events);

    // An aggregate link alone replaced: its predecessor read in the batch
    // before (5 001's is 4 961), and in the same batch (7 777's is 7 737).
    for position in [5_001, 7_777] {
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT aggregate_hash FROM event_log WHERE position = $1")
                .bind(position)
                .fetch_one(&pool)
                .await
                .unwrap();
        let set = "UPDATE event_log SET aggregate_hash = $2 WHERE position = $1";
        sqlx::query(set)
            .bind(position)
            .bind(vec![0u8; 32])
            .execute(&pool)
            .await
            .unwrap();
        let found = chain::verify(&pool, None, |_, _| {}).await.unwrap();
        assert_eq!(found.first_bad_position, Some(position), "{found:?}");
        assert!(found.reason.unwrap().contains("the chain of Chat chat-"));
        sqlx::query(set)
            .bind(position)
            .bind(stored)
            .execute(&pool)
            .await
            .unwrap();
    }

    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&pool)
        .await
        .unwrap();
    // The last of a batch, the first of the next, one inside a batch, and the
    // last of the log, from the latest change back to the earliest.
    for position in [events, 7_777, 5_001, 5_000] {
        sqlx::query(
            "UPDATE events SET payload = '{\"MessageSent\": {\"body\": \"changed\"}}'
              WHERE event_id = (SELECT event_id FROM event_log WHERE position = $1)",
        )
        .bind(position)
        .execute(&pool)
        .await
        .unwrap();
        let found = chain::verify(&pool, None, |_, _| {}).await.unwrap();
        assert_eq!(found.first_bad_position, Some(position), "{found:?}");
        assert_eq!(found.events_checked, position - 1);
    }
    support::delete_stream(&topology).await;
}
