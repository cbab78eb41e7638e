//! Checkpoints and dead letters of every follower: how far it has followed
//! the log (`projection_checkpoints`), and the entries it had to set aside
//! (`projection_dead_letters`). Both tables key their rows by the follower's
//! name.

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};

use super::TransactionalFollower;
use crate::log::{self, LogEntry};

/// The position the follower `name` has followed up to (0 before its first
/// entry).
pub async fn read<'c>(executor: impl PgExecutor<'c>, name: &str) -> Result<i64, sqlx::Error> {
    let mut query = QueryBuilder::new("SELECT ");
    push_position(&mut query, name);
    query.build_query_scalar().fetch_one(executor).await
}

/// Pushes onto `query` the expression [`read`] selects: the position of the
/// follower `name`, 0 before its first entry; for a read that needs it beside
/// other columns.
pub fn push_position<'a>(query: &mut QueryBuilder<'a, Postgres>, name: &'a str) {
    query.push("coalesce((SELECT position FROM projection_checkpoints WHERE projection = ");
    query.push_bind(name);
    query.push("), 0)");
}

/// The checkpoints of several followers, in the order asked.
pub async fn read_many(pool: &PgPool, names: &[&str]) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, position FROM projection_checkpoints WHERE projection = ANY($1)",
    )
    .bind(names)
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

/// Makes sure the follower has a checkpoint row to lock and move.
pub async fn ensure<'c>(executor: impl PgExecutor<'c>, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .execute(executor)
    .await?;
    Ok(())
}

/// Locks the follower's checkpoint for the rest of the transaction, so that
/// two workers of one follower never apply the same entry, and reads it; in a
/// transaction begun by [`crate::locks::begin_without_events`], so that the
/// relay does not wait for it.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(conn)
    .await
}

/// Moves the checkpoint forward to `position`, never back: inside the
/// transaction that applied up to it, or after the effects up to it.
pub async fn advance<'c>(
    executor: impl PgExecutor<'c>,
    name: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_checkpoints SET position = $2 WHERE projection = $1 AND position < $2",
    )
    .bind(name)
    .bind(position)
    .execute(executor)
    .await?;
    Ok(())
}

/// Moves the checkpoint of the follower `name` to `to`, past entries it does
/// not follow, in one statement, where it stands at `after` or later; true
/// when it now stands at `to` or later. Its commit does not wait for the
/// disk: entries a crash takes it back over change nothing.
pub async fn skip(pool: &PgPool, name: &str, after: i64, to: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT skip_checkpoint($1, $2, $3)")
        .bind(name)
        .bind(after)
        .bind(to)
        .fetch_one(pool)
        .await
}

/// An entry a follower skipped because it kept failing.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The follower that skipped it (a projection or a process manager).
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
    sqlx::query_as(include_str!("dead_letters.sql"))
        .fetch_all(pool)
        .await
}

/// Records `entry` as a dead letter of the follower `name` after `attempts`
/// tries. The checkpoint is moved past it by the caller.
pub async fn bury<'c>(
    executor: impl PgExecutor<'c>,
    name: &str,
    entry: &LogEntry,
    error: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("bury.sql"))
        .bind(name)
        .bind(entry.position)
        .bind(entry.event_id)
        .bind(error)
        .bind(attempts)
        .execute(executor)
        .await?;
    Ok(())
}

/// Applies a follower's dead letters again, oldest first; each one that now
/// applies is removed. Returns how many applied and how many still fail.
pub async fn retry_dead_letters<F: TransactionalFollower>(
    pool: &PgPool,
    follower: &F,
) -> Result<(usize, usize), sqlx::Error> {
    let name = follower.name();
    let positions: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM projection_dead_letters WHERE projection = $1 ORDER BY position",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let (mut applied, mut failing) = (0, 0);
    let mut conn = pool.acquire().await?;
    for position in positions {
        let Some(entry) = log::read_after(&mut *conn, position - 1, 1).await?.pop() else {
            continue;
        };
        let mut tx = conn.begin().await?;
        match follower.apply(&mut tx, std::slice::from_ref(&entry)).await {
            Ok(()) => {
                sqlx::query(
                    "DELETE FROM projection_dead_letters WHERE projection = $1 AND position = $2",
                )
                .bind(name)
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
                .bind(name)
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
