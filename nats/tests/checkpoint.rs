//! A follower's checkpoint moves past entries it does not follow without a
//! transaction of its own, and never past entries it has not applied.
#![allow(clippy::unwrap_used)]

use herald_nats::follower::checkpoint;
use herald_nats::testing as support;

#[tokio::test]
async fn a_checkpoint_skips_entries_it_does_not_follow_only_from_where_it_stands() {
    let url = support::fresh_database().await;
    let pool = support::migrated_pool(&url).await;
    let _leftovers = support::Leftovers::new(Some(url.clone()), None);
    checkpoint::ensure(&pool, "skipping").await.unwrap();
    checkpoint::advance(&pool, "skipping", 10).await.unwrap();

    // Entries 14 to 20 come after 11 to 13, which it has not applied.
    assert!(!checkpoint::skip(&pool, "skipping", 13, 20).await.unwrap());
    assert_eq!(checkpoint::read(&pool, "skipping").await.unwrap(), 10);

    // Entries 11 to 20 come right after the checkpoint.
    assert!(checkpoint::skip(&pool, "skipping", 10, 20).await.unwrap());
    assert_eq!(checkpoint::read(&pool, "skipping").await.unwrap(), 20);

    // Entries another worker already moved it past.
    assert!(checkpoint::skip(&pool, "skipping", 12, 15).await.unwrap());
    assert_eq!(checkpoint::read(&pool, "skipping").await.unwrap(), 20);
}
