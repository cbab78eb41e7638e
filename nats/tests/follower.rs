//! Followers of one process share one consumer of the stream, and each,
//! however slow, applies every entry exactly once: what it was not handed it
//! reads from the Postgres log.
#![allow(clippy::unwrap_used)]

use herald_nats::follower::{checkpoint, ApplyError, Follower, Source, TransactionalFollower};
use herald_nats::testing as support;
use herald_nats::LogEntry;

use std::future::Future;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

/// Notes each position it applies in `seen`, where a second note of one
/// position breaks the primary key; `pause` makes it slow.
struct Noting {
    name: &'static str,
    pause: Duration,
}

impl Follower for Noting {
    const BATCH: usize = 50;

    fn name(&self) -> &str {
        self.name
    }

    fn follows(&self, _entry: &LogEntry) -> bool {
        true
    }
}

impl TransactionalFollower for Noting {
    fn apply(
        &self,
        tx: &mut PgConnection,
        entries: &[LogEntry],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        let positions: Vec<i64> = entries.iter().map(|entry| entry.position).collect();
        async move {
            tokio::time::sleep(self.pause).await;
            sqlx::query("INSERT INTO seen (follower, position) SELECT $1, unnest($2::bigint[])")
                .bind(self.name)
                .bind(positions)
                .execute(tx)
                .await?;
            Ok(())
        }
    }
}

async fn seen(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM seen WHERE follower = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn followers_sharing_one_consumer_each_apply_every_entry_once_the_slow_one_too() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let topology = support::fresh_topology().await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), Some(topology.clone()));
    sqlx::query(
        "CREATE TABLE seen (follower text, position bigint, PRIMARY KEY (follower, position))",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (relay, _stop_relay) = support::start_relay(&pool, &topology).await;
    let client = herald_nats::connect(&support::nats_url()).await.unwrap();
    let source = Source::new(pool.clone(), client, topology.clone());
    let fast = Noting {
        name: "fast",
        pause: Duration::ZERO,
    };
    let slow = Noting {
        name: "slow",
        pause: Duration::from_millis(20),
    };
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    let following = futures::future::join(
        source.follow_in_transaction(&fast, until_stopped()),
        source.follow_in_transaction(&slow, until_stopped()),
    );
    let appending = async {
        // Many small commits, each its own message.
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let count = 4000;
        for sequence in 1..=count {
            support::append(&mut conn, "busy-chat", sequence).await;
        }
        support::wait_until_published(&relay, count).await;
        for _ in 0..600 {
            let done = checkpoint::read_many(&pool, &["fast", "slow"])
                .await
                .unwrap();
            if done == [count, count] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(stop);
        count
    };
    let (_, count) = tokio::join!(following, appending);

    assert_eq!(seen(&pool, "fast").await, count);
    assert_eq!(seen(&pool, "slow").await, count);
    assert!(checkpoint::dead_letters(&pool).await.unwrap().is_empty());
    let consumers =
        async_nats::jetstream::new(herald_nats::connect(&support::nats_url()).await.unwrap())
            .get_stream(topology.stream_name())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .consumer_count;
    assert!(consumers <= 1, "{consumers} consumers");
}
