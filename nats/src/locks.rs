//! Every Postgres advisory lock Herald takes, in one list, so that no two
//! purposes ever share an id.
//!
//! The ids begin with "HERALD" in ASCII (`0x4845_5241_4c44`).

use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

/// Held by the active relay of a database for as long as it is active.
pub const RELAY: i64 = 0x4845_5241_4c44_0001;

/// Held by the active payment process manager of a database.
pub const PAYMENT_PROCESS: i64 = 0x4845_5241_4c44_0002;

/// Held by the active maker of attachments' thumbnails of a database.
pub const THUMBNAILS: i64 = 0x4845_5241_4c44_0003;

/// The first of the locks that keep two replays of one projection apart; see
/// [`replay`].
pub const REPLAY: i64 = 0x4845_5241_4c44_0100;

/// Whether a transaction's commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// It waits: what the transaction did must survive a crash of Postgres.
    Synced,
    /// It does not: what a crash of Postgres loses is done again, from the
    /// log or from a cursor that moves in the same transaction.
    Unsynced,
}

/// Opens a transaction that never writes events, declared as such before
/// anything else (`declare_no_event_writes()`, which names the transaction in
/// its session's `application_name`; `event_horizon()` looks past the
/// transactions so named: `migrations/20261204000001_event_horizon_from_backend_status.sql`),
/// so that the relay does not wait for it; in one round trip.
pub async fn begin_without_events(
    conn: &mut PgConnection,
    commit: Commit,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin_with(match commit {
        Commit::Synced => "BEGIN; SELECT declare_no_event_writes()",
        Commit::Unsynced => {
            "BEGIN; SET LOCAL synchronous_commit = off; SELECT declare_no_event_writes()"
        }
    })
    .await
}

/// The lock held by the replay of the projection at `index` of the
/// projections' list.
pub const fn replay(index: usize) -> i64 {
    REPLAY + index as i64
}

/// Takes the session lock `id` if it is free, on a connection taken out of
/// the pool: the lock lives exactly as long as that connection, which must
/// never go back to the pool still holding it. `None`: another session holds
/// the lock.
pub async fn try_hold(pool: &PgPool, id: i64) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(acquired.then(|| conn.detach()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_locks_share_an_id() {
        let mut ids = vec![RELAY, PAYMENT_PROCESS, THUMBNAILS];
        ids.extend((0..16).map(replay));
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
