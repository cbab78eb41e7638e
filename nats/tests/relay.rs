//! The relay publishes every committed event exactly once, in commit order,
//! whatever order transactions commit in, and one relay at a time.
#![allow(clippy::unwrap_used)]

use herald_nats::testing as support;
use herald_nats::Relay;
use support::append;

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn all_event_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT event_id FROM events ORDER BY event_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_event_committed_late_with_an_earlier_id_is_relayed_where_a_naive_reader_skips_it() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    // Transaction A takes the earlier event_id but commits last.
    let mut slow = PgConnection::connect(&url).await.unwrap();
    let mut slow_tx = slow.begin().await.unwrap();
    let early_id = append(&mut slow_tx, "slow-chat", 1).await;
    let mut fast = PgConnection::connect(&url).await.unwrap();
    let late_id = append(&mut fast, "fast-chat", 1).await;
    assert!(early_id < late_id);

    // A naive reader following event_id sees the later one and moves past.
    let naive_cursor: i64 = sqlx::query_scalar("SELECT max(event_id) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    slow_tx.commit().await.unwrap();
    let naive_after: Vec<i64> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE event_id > $1")
            .bind(naive_cursor)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        naive_after.is_empty(),
        "the naive reader never sees event {early_id}"
    );

    support::wait_until_published(&relay, 2).await;
    let entries = support::stream_entries(&topology).await;
    support::assert_complete_and_ordered(&entries, &all_event_ids(&pool).await);
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn events_are_sequenced_in_numeric_transaction_order_where_the_ids_gain_a_digit() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    // Transactions 9 and 10 ended long ago: "10" sorts before "9" as text.
    let mut ids = Vec::new();
    for (xid, sequence) in [("9", 1), ("10", 2)] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, xid)
             VALUES ('Chat', 'old-chat', $1, 'MessageSent', '1', '{}', '{}', $2::xid8)
             RETURNING event_id",
        )
        .bind(sequence)
        .bind(xid)
        .fetch_one(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    support::wait_until_published(&relay, 2).await;
    let entries = support::stream_entries(&topology).await;
    support::assert_complete_and_ordered(&entries, &ids);
    support::delete_stream(&topology).await;
}

/// A connection inside a transaction that has written something other than an
/// event, so it holds a transaction id; `declared` says whether it first
/// declared that it writes no events, as projection batches do.
async fn open_transaction_with_an_id(url: &str, declared: bool) -> PgConnection {
    let mut connection = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
    if declared {
        sqlx::query("SELECT declare_no_event_writes()")
            .execute(&mut connection)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO projection_checkpoints (projection) VALUES ('long-batch')")
        .execute(&mut connection)
        .await
        .unwrap();
    connection
}

async fn commit(mut connection: PgConnection) {
    sqlx::query("COMMIT")
        .execute(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_open_transaction_that_may_write_events_holds_the_relay_back_until_it_ends() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    let open = open_transaction_with_an_id(&url, false).await;
    assert_held_back_until_it_commits(&url, &relay, open).await;
    support::delete_stream(&topology).await;
}

/// Commits an event beside `open` and shows the relay holding it back until
/// `open` commits.
async fn assert_held_back_until_it_commits(url: &str, relay: &Relay, open: PgConnection) {
    let mut writer = PgConnection::connect(url).await.unwrap();
    append(&mut writer, "chat", 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        relay.status().sequenced(),
        0,
        "sequenced past an open writer"
    );

    commit(open).await;
    support::wait_until_published(relay, 1).await;
}

#[tokio::test]
async fn a_long_transaction_that_declared_it_writes_no_events_does_not_hold_the_relay_back() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    let open = open_transaction_with_an_id(&url, true).await;
    let mut writer = PgConnection::connect(&url).await.unwrap();
    append(&mut writer, "chat", 1).await;
    append(&mut writer, "chat", 2).await;
    support::wait_until_published(&relay, 2).await;

    commit(open).await;
    let entries = support::stream_entries(&topology).await;
    support::assert_complete_and_ordered(&entries, &all_event_ids(&pool).await);
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn a_transaction_after_a_declared_one_on_the_same_connection_holds_the_relay_back() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    // The declaration ends with its transaction; the next one may write events.
    let mut connection = open_transaction_with_an_id(&url, true).await;
    for statement in [
        "COMMIT",
        "BEGIN",
        "INSERT INTO projection_checkpoints (projection) VALUES ('next-batch')",
    ] {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    assert_held_back_until_it_commits(&url, &relay, connection).await;
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn a_transaction_open_in_another_database_does_not_hold_the_relay_back() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let elsewhere = support::fresh_database().await;
    support::migrated_pool(&elsewhere).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let _elsewhere = support::Leftovers::new(Some(elsewhere.clone()), None);
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    let open = open_transaction_with_an_id(&elsewhere, false).await;
    let mut writer = PgConnection::connect(&url).await.unwrap();
    append(&mut writer, "chat", 1).await;
    support::wait_until_published(&relay, 1).await;

    commit(open).await;
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn many_writers_committing_out_of_order_are_all_relayed_once_while_a_naive_reader_misses_some(
) {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let (relay, _stop) = support::start_relay(&pool, &topology).await;

    let naive_seen = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut cursor = 0i64;
            for _ in 0..400 {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT event_id FROM events WHERE event_id > $1 ORDER BY event_id",
                )
                .bind(cursor)
                .fetch_all(&pool)
                .await
                .unwrap();
                if let Some(last) = ids.last() {
                    cursor = *last;
                }
                seen.extend(ids);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };

    let writers = (0..8).map(|writer| {
        let url = url.clone();
        async move {
            let mut connection = PgConnection::connect(&url).await.unwrap();
            let aggregate = format!("chat-{writer}-{}", Uuid::new_v4());
            let mut sequence = 0;
            for round in 0..25 {
                let mut tx = connection.begin().await.unwrap();
                for _ in 0..(1 + round % 3) {
                    sequence += 1;
                    append(&mut tx, &aggregate, sequence).await;
                }
                if (writer + round) % 4 == 0 {
                    // Hold the transaction open so that later ids commit first.
                    sqlx::query("SELECT pg_sleep(0.03)")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    });
    join_all(writers).await;

    let event_ids = all_event_ids(&pool).await;
    support::wait_until_published(&relay, event_ids.len() as i64).await;
    support::assert_complete_and_ordered(&support::stream_entries(&topology).await, &event_ids);

    let naive_seen = naive_seen.await.unwrap();
    let missed = event_ids
        .iter()
        .filter(|id| !naive_seen.contains(id))
        .count();
    assert!(
        missed > 0,
        "the naive reader was expected to skip late commits"
    );
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn two_relays_keep_one_active_and_the_standby_takes_over_when_it_stops() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let mut connection = PgConnection::connect(&url).await.unwrap();
    append(&mut connection, "chat", 1).await;

    let (first, stop_first) = support::start_relay(&pool, &topology).await;
    support::wait_until_published(&first, 1).await;
    let second_pool = PgPool::connect(&url).await.unwrap();
    let (second, _stop_second) = support::start_relay(&second_pool, &topology).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(first.status().is_active());
    assert!(!second.status().is_active());

    drop(stop_first);
    append(&mut connection, "chat", 2).await;
    for _ in 0..100 {
        if second.status().is_active() && second.status().published() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.status().is_active(), "the standby did not take over");
    support::wait_until_published(&second, 2).await;
    support::assert_complete_and_ordered(
        &support::stream_entries(&topology).await,
        &all_event_ids(&pool).await,
    );
    support::delete_stream(&topology).await;
}

#[tokio::test]
async fn a_stream_that_lost_its_messages_is_refilled_from_the_log() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    let mut connection = PgConnection::connect(&url).await.unwrap();
    for sequence in 1..=3 {
        append(&mut connection, "chat", sequence).await;
    }
    let (relay, _stop) = support::start_relay(&pool, &topology).await;
    support::wait_until_published(&relay, 3).await;

    // NATS comes back without what it had not synced to disk: here, everything.
    support::delete_stream(&topology).await;
    append(&mut connection, "chat", 4).await;

    for _ in 0..200 {
        if support::stream_entries(&topology).await.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::assert_complete_and_ordered(
        &support::stream_entries(&topology).await,
        &all_event_ids(&pool).await,
    );
    support::delete_stream(&topology).await;
}
