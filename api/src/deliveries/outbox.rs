//! Filling a channel's outbox: the notifications after its cursor become
//! the deliveries its channel says they make, and the cursor moves past
//! them, in one transaction that holds the cursor row locked, so that
//! workers of several processes queue each notification once.

use herald_nats::locks::{self, Commit};
use projections::notifications;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Channel, Target};

/// The most notifications one transaction queues, give or take the others at
/// the position it ends on.
const BATCH: i64 = 500;

/// What one transaction queued.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Queued {
    /// Notifications looked at; none when the cursor was at the newest.
    pub notifications: usize,
    /// Deliveries added to the outbox.
    pub deliveries: u64,
}

/// Writes `channel`'s cursor at the head of the log, unless a worker did
/// before: what happened before the channel was set up is not delivered,
/// even when the notifications projection is still on its way through it.
pub(super) async fn start(pool: &PgPool, channel: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notification_delivery_cursors (channel, position)
         SELECT $1, sequenced_position FROM relay_cursor
         ON CONFLICT DO NOTHING",
    )
    .bind(channel)
    .execute(pool)
    .await?;
    Ok(())
}

/// Queues the deliveries of the next notifications after the cursor and
/// moves the cursor past them.
pub(super) async fn queue<C: Channel>(pool: &PgPool, channel: &C) -> Result<Queued, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // A cursor move a crash loses queues its deliveries again, which are
    // there already: the commit need not wait for the disk.
    let mut tx = locks::begin_without_events(&mut conn, Commit::Unsynced).await?;
    let cursor: i64 = sqlx::query_scalar(
        "SELECT position FROM notification_delivery_cursors WHERE channel = $1 FOR UPDATE",
    )
    .bind(C::NAME)
    .fetch_one(&mut *tx)
    .await?;
    let fresh = notifications::after(&mut *tx, cursor, BATCH).await?;
    let Some(last) = fresh
        .last()
        .map(|notification| notification.notification.seq)
    else {
        return Ok(Queued::default());
    };
    let targets = channel.targets(&mut tx, &fresh).await?;
    let deliveries = insert(&mut tx, C::NAME, &targets).await?;
    sqlx::query("UPDATE notification_delivery_cursors SET position = $2 WHERE channel = $1")
        .bind(C::NAME)
        .bind(last)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Queued {
        notifications: fresh.len(),
        deliveries,
    })
}

/// Adds `targets` to the outbox of `channel`, those already there excepted;
/// how many were added.
async fn insert(
    conn: &mut PgConnection,
    channel: &str,
    targets: &[Target],
) -> Result<u64, sqlx::Error> {
    if targets.is_empty() {
        return Ok(0);
    }
    let notifications: Vec<Uuid> = targets.iter().map(|t| t.notification_id).collect();
    let ids: Vec<Uuid> = targets.iter().map(|t| t.target).collect();
    let kinds: Vec<&str> = targets.iter().map(|t| t.kind.as_str()).collect();
    let positions: Vec<i64> = targets.iter().map(|t| t.position).collect();
    let inserted = sqlx::query(
        "INSERT INTO notification_deliveries (notification_id, channel, target, kind, position)
         SELECT n, $2, t, k, p FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::bigint[])
                                  AS d (n, t, k, p)
         ON CONFLICT DO NOTHING",
    )
    .bind(notifications)
    .bind(channel)
    .bind(ids)
    .bind(kinds)
    .bind(positions)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected())
}
