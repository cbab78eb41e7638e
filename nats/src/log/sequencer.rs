//! Sequencing: numbering committed events densely in commit order in
//! `event_log`, linking each into the hash chains in the same transaction.
//! Only the active relay runs it, through the connection holding its lock.

use sqlx::{Connection, PgConnection};

use super::chain::{self, Heads};
use crate::LogEntry;

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

/// Where the sequencer stands, read at the start of its transaction.
#[derive(sqlx::FromRow)]
struct Cursor {
    sequenced_xid: String,
    sequenced_event_id: i64,
    sequenced_position: i64,
    hashed_position: i64,
    /// The log-chain hash stored at `hashed_position`.
    head_hash: Option<Vec<u8>>,
    horizon: String,
    /// Committed events exist past the horizon.
    blocked: bool,
}

/// A committed event not numbered yet, with its place in commit order.
#[derive(sqlx::FromRow)]
struct Unnumbered {
    #[sqlx(flatten)]
    entry: LogEntry,
    xid_text: String,
}

/// Numbers the next committed events below the horizon and links them into
/// the hash chains, in one transaction on the lock's connection. Returns the
/// step and the entries it numbered, as the log now holds them.
pub(crate) async fn sequence_batch(
    lock: &mut PgConnection,
    heads: &mut Heads,
) -> Result<(SequenceStep, Vec<LogEntry>), sqlx::Error> {
    let mut tx = lock.begin().await?;
    // One snapshot for the horizon and the read, so both see the same world.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    // Only the sequencer, through the lock's connection, writes the cursor,
    // so repeatable read never finds it updated behind the snapshot's back.
    // max() is one step down the (xid, event_id) index whatever the plan; an
    // EXISTS over `xid >= horizon` gets a generic plan that scans the table.
    let cursor: Cursor = sqlx::query_as(
        "SELECT c.sequenced_xid::text AS sequenced_xid, c.sequenced_event_id,
                c.sequenced_position, c.hashed_position,
                (SELECT hash FROM event_log WHERE position = c.hashed_position) AS head_hash,
                h.horizon::text AS horizon,
                coalesce((SELECT max(xid) FROM events) >= h.horizon, false) AS blocked
           FROM relay_cursor c, event_horizon() AS h(horizon)",
    )
    .fetch_one(&mut *tx)
    .await?;
    let position = cursor.sequenced_position;
    let head = chain::stored_head(cursor.hashed_position, cursor.head_hash);
    if cursor.hashed_position < position {
        // The chain must reach the head before anything new joins it.
        let hashed = chain::hash_through(
            &mut tx,
            heads,
            cursor.hashed_position,
            head,
            position,
            SEQUENCE_BATCH,
        )
        .await?;
        tx.commit().await?;
        let step = SequenceStep {
            numbered: 0,
            position,
            blocked: false,
            unhashed: hashed < position,
        };
        return Ok((step, Vec::new()));
    }
    // Ordered by the xid8 column itself: an output column named `xid` (the
    // text) would be what ORDER BY sorted by, and as text "10" comes before
    // "9". The (xid, event_id) index serves the order and the range.
    let next: Vec<Unnumbered> = sqlx::query_as(
        "SELECT 0::bigint AS position, e.event_id, e.aggregate_type, e.aggregate_id,
                e.sequence, e.event_type, e.event_version, e.payload, e.metadata,
                e.recorded_at, e.xid::text AS xid_text
           FROM events e
          WHERE (e.xid, e.event_id) > ($1::xid8, $2)
            AND e.xid < $4::xid8
          ORDER BY e.xid, e.event_id
          LIMIT $3",
    )
    .bind(&cursor.sequenced_xid)
    .bind(cursor.sequenced_event_id)
    .bind(SEQUENCE_BATCH)
    .bind(&cursor.horizon)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last_xid) = next.last().map(|row| row.xid_text.clone()) else {
        tx.commit().await?;
        let step = SequenceStep {
            numbered: 0,
            position,
            blocked: cursor.blocked,
            unhashed: false,
        };
        return Ok((step, Vec::new()));
    };
    let entries: Vec<LogEntry> = next
        .into_iter()
        .zip(position + 1..)
        .map(|(row, at)| LogEntry {
            position: at,
            ..row.entry
        })
        .collect();
    let numbered = entries.len() as i64;
    let links = chain::link_entries(&mut tx, heads, head, &entries).await?;
    let event_ids: Vec<i64> = entries.iter().map(|entry| entry.event_id).collect();
    sqlx::query(
        "WITH numbered AS (
           INSERT INTO event_log (position, event_id, hash, aggregate_hash)
           SELECT $1 + n, event_id, hash, aggregate_hash
             FROM unnest($2::bigint[], $3::bytea[], $4::bytea[])
                  WITH ORDINALITY AS t(event_id, hash, aggregate_hash, n))
         UPDATE relay_cursor
            SET sequenced_xid = $5::xid8, sequenced_event_id = $6,
                sequenced_position = $1 + $7, hashed_position = $1 + $7",
    )
    .bind(position)
    .bind(&event_ids)
    .bind(&links.hashes)
    .bind(&links.aggregate_hashes)
    .bind(&last_xid)
    .bind(event_ids[event_ids.len() - 1])
    .bind(numbered)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let step = SequenceStep {
        numbered,
        position: position + numbered,
        blocked: cursor.blocked,
        unhashed: false,
    };
    Ok((step, entries))
}
