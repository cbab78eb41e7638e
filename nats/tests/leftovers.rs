//! What a test makes on the real servers is dropped when it passes and kept,
//! for a look, when it fails.
#![allow(clippy::unwrap_used)]

use herald_nats::testing::{self as support, Leftovers};
use sqlx::PgPool;

async fn exists(url: &str) -> bool {
    let name = url.rsplit('/').next().unwrap();
    let server = PgPool::connect(&format!("{}/postgres", support::server_url()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&server)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_passing_tests_database_is_dropped_and_a_failing_ones_kept() {
    let failed = support::fresh_database().await;
    let passed = support::fresh_database().await;
    support::migrated_pool(&failed).await;
    support::migrated_pool(&passed).await;

    let unwound = std::panic::catch_unwind(|| {
        let _leftovers = Leftovers::new(Some(failed.clone()), None);
        panic!("the test failed");
    });
    drop(Leftovers::new(Some(passed.clone()), None));

    assert!(unwound.is_err());
    assert!(exists(&failed).await);
    assert!(!exists(&passed).await);
    drop(Leftovers::new(Some(failed.clone()), None));
    assert!(!exists(&failed).await);
}
