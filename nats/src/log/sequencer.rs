//! Sequencing: numbering committed events densely in commit order in
//! `event_log`, linking each into the hash chains in the same transaction.
//! Only the active relay runs it, through the connection holding its lock.

use sqlx::{Connection, PgConnection};

use super::chain::{self, Heads};

/// Most events numbered in one sequencer transaction.
pub(crate) const SEQUENCE_BATCH: i64 = 2000;

/// What one sequencer step did.
pub(crate) struct SequenceStep {
    pub(crate) numbered: i64,
    pub(crate) position: i64,
    /// Committed events exist past the horizon: an older transaction is still open.
    pub(crate) blocked: bool,
    /// Entries numbered before the hash chains existed still wait to be linked.
    pub(crate) unhashed: bool,
}

/// Numbers the next committed events below the horizon, in one transaction on
/// the lock's connection.
pub(crate) async fn sequence_batch(
    lock: &mut PgConnection,
    heads: &mut Heads,
) -> Result<SequenceStep, sqlx::Error> {
    let mut tx = lock.begin().await?;
    // One snapshot for the horizon and the read, so both see the same world.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    // Only the sequencer, through the lock's connection, writes the cursor,
    // so repeatable read never finds it updated behind the snapshot's back.
    let (cursor_xid, cursor_event_id, position, hashed): (String, i64, i64, i64) = sqlx::query_as(
        "SELECT sequenced_xid::text, sequenced_event_id, sequenced_position, hashed_position
           FROM relay_cursor",
    )
    .fetch_one(&mut *tx)
    .await?;
    if hashed < position {
        // The chain must reach the head before anything new joins it.
        let hashed = chain::hash_through(&mut tx, heads, position, SEQUENCE_BATCH).await?;
        tx.commit().await?;
        return Ok(SequenceStep {
            numbered: 0,
            position,
            blocked: false,
            unhashed: hashed < position,
        });
    }
    let horizon: String = sqlx::query_scalar("SELECT event_horizon()::text")
        .fetch_one(&mut *tx)
        .await?;
    // Ordered by the xid8 column itself: an output column named `xid` (the
    // text) would be what ORDER BY sorted by, and as text "10" comes before
    // "9". The (xid, event_id) index serves the order and the range.
    let next: Vec<(i64, String)> = sqlx::query_as(
        "SELECT e.event_id, e.xid::text AS xid_text FROM events e
          WHERE (e.xid, e.event_id) > ($1::xid8, $2)
            AND e.xid < $4::xid8
          ORDER BY e.xid, e.event_id
          LIMIT $3",
    )
    .bind(&cursor_xid)
    .bind(cursor_event_id)
    .bind(SEQUENCE_BATCH)
    .bind(&horizon)
    .fetch_all(&mut *tx)
    .await?;
    // max() is one step down the (xid, event_id) index whatever the plan; an
    // EXISTS over `xid >= $1` gets a generic plan that scans the whole table.
    let blocked: bool =
        sqlx::query_scalar("SELECT coalesce(max(xid) >= $1::xid8, false) FROM events")
            .bind(&horizon)
            .fetch_one(&mut *tx)
            .await?;
    let Some((last_event_id, last_xid)) = next.last().cloned() else {
        tx.commit().await?;
        return Ok(SequenceStep {
            numbered: 0,
            position,
            blocked,
            unhashed: false,
        });
    };
    let ids: Vec<i64> = next.iter().map(|(event_id, _)| *event_id).collect();
    let numbered = ids.len() as i64;
    sqlx::query(
        "INSERT INTO event_log (position, event_id)
         SELECT $1 + n, event_id FROM unnest($2::bigint[]) WITH ORDINALITY AS t(event_id, n)",
    )
    .bind(position)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE relay_cursor
            SET sequenced_xid = $1::xid8, sequenced_event_id = $2, sequenced_position = $3",
    )
    .bind(&last_xid)
    .bind(last_event_id)
    .bind(position + numbered)
    .execute(&mut *tx)
    .await?;
    chain::hash_through(&mut tx, heads, position + numbered, numbered).await?;
    tx.commit().await?;
    Ok(SequenceStep {
        numbered,
        position: position + numbered,
        blocked,
        unhashed: false,
    })
}
