//! Checkpoints and dead letters: how far each projection has applied the log,
//! and the entries it had to skip.

use chrono::{DateTime, Utc};
use herald_nats::{log, LogEntry};
use sqlx::{Acquire, PgConnection, PgExecutor, PgPool};

use crate::Projection;

/// The position a projection has applied up to (0 before its first entry).
pub async fn checkpoint<'c>(
    executor: impl PgExecutor<'c>,
    projection: Projection,
) -> Result<i64, sqlx::Error> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
            .bind(projection.name())
            .fetch_optional(executor)
            .await?;
    Ok(position.unwrap_or(0))
}

/// The checkpoints of several projections, in the order asked.
pub async fn checkpoints(
    pool: &PgPool,
    projections: &[Projection],
) -> Result<Vec<i64>, sqlx::Error> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, position FROM projection_checkpoints WHERE projection = ANY($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(names
        .iter()
        .map(|name| {
            rows.iter()
                .find(|(projection, _)| projection == name)
                .map_or(0, |(_, position)| *position)
        })
        .collect())
}

/// Makes sure the projection has a checkpoint row to lock.
pub(crate) async fn ensure(pool: &PgPool, projection: Projection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(projection.name())
    .execute(pool)
    .await?;
    Ok(())
}

/// Locks the projection's checkpoint for the rest of the transaction, so that
/// two workers of one projection never apply the same entry, and reads it.
/// It must be the transaction's first write: it also declares that the
/// transaction writes no events, so the relay does not wait for it.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    projection: Projection,
) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT declare_no_event_writes()")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(projection.name())
    .fetch_one(conn)
    .await
}

/// Moves the checkpoint, inside the transaction that applied up to `position`.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    projection: Projection,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_checkpoints SET position = $2 WHERE projection = $1")
        .bind(projection.name())
        .bind(position)
        .execute(conn)
        .await?;
    Ok(())
}

/// An entry a projection skipped because it kept failing.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DeadLetter {
    /// The projection that skipped it.
    pub projection: String,
    /// The entry's log position.
    pub position: i64,
    /// The event's identity.
    pub event_id: i64,
    /// What went wrong the last time.
    pub error: String,
    /// How often it was tried.
    pub attempts: i32,
    /// When it was given up on.
    pub failed_at: DateTime<Utc>,
}

/// Every dead letter, oldest first.
pub async fn dead_letters(pool: &PgPool) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT projection, position, event_id, error, attempts, failed_at
           FROM projection_dead_letters ORDER BY projection, position",
    )
    .fetch_all(pool)
    .await
}

/// Records `entry` as dead and moves the checkpoint past it.
pub(crate) async fn bury(
    conn: &mut PgConnection,
    projection: Projection,
    entry: &LogEntry,
    error: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_dead_letters (projection, position, event_id, error, attempts)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (projection, position) DO UPDATE
            SET error = EXCLUDED.error, attempts = projection_dead_letters.attempts + EXCLUDED.attempts,
                failed_at = EXCLUDED.failed_at",
    )
    .bind(projection.name())
    .bind(entry.position)
    .bind(entry.event_id)
    .bind(error)
    .bind(attempts)
    .execute(&mut *conn)
    .await?;
    advance(conn, projection, entry.position).await
}

/// Applies a projection's dead letters again, oldest first; each one that now
/// applies is removed. Returns how many applied and how many still fail.
pub async fn retry_dead_letters(
    pool: &PgPool,
    projection: Projection,
) -> Result<(usize, usize), sqlx::Error> {
    let positions: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM projection_dead_letters WHERE projection = $1 ORDER BY position",
    )
    .bind(projection.name())
    .fetch_all(pool)
    .await?;
    let (mut applied, mut failing) = (0, 0);
    let mut conn = pool.acquire().await?;
    for position in positions {
        let Some(entry) = log::read_after(&mut *conn, position - 1, 1).await?.pop() else {
            continue;
        };
        let mut tx = conn.begin().await?;
        match projection.apply(&mut tx, &entry).await {
            Ok(()) => {
                sqlx::query(
                    "DELETE FROM projection_dead_letters WHERE projection = $1 AND position = $2",
                )
                .bind(projection.name())
                .bind(position)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                applied += 1;
            }
            Err(err) => {
                tx.rollback().await?;
                sqlx::query(
                    "UPDATE projection_dead_letters SET error = $3, attempts = attempts + 1
                      WHERE projection = $1 AND position = $2",
                )
                .bind(projection.name())
                .bind(position)
                .bind(err.to_string())
                .execute(&mut *conn)
                .await?;
                failing += 1;
            }
        }
    }
    Ok((applied, failing))
}
