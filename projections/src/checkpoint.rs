//! Checkpoints and dead letters of projections, by [`Projection`]; the SQL is
//! the followers' own ([`herald_nats::follower::checkpoint`]).

use herald_nats::follower::checkpoint;
use sqlx::{PgExecutor, PgPool};

use crate::Projection;

pub use checkpoint::{dead_letters, DeadLetter};

/// The position a projection has applied up to (0 before its first entry).
pub async fn checkpoint<'c>(
    executor: impl PgExecutor<'c>,
    projection: Projection,
) -> Result<i64, sqlx::Error> {
    checkpoint::read(executor, projection.name()).await
}

/// The checkpoints of several projections, in the order asked.
pub async fn checkpoints(
    pool: &PgPool,
    projections: &[Projection],
) -> Result<Vec<i64>, sqlx::Error> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    checkpoint::read_many(pool, &names).await
}

/// Applies a projection's dead letters again, oldest first; each one that now
/// applies is removed. Returns how many applied and how many still fail.
pub async fn retry_dead_letters(
    pool: &PgPool,
    projection: Projection,
) -> Result<(usize, usize), sqlx::Error> {
    checkpoint::retry_dead_letters(pool, &projection).await
}
