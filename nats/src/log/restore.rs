//! Restoring an exported log (`herald events export`) into an empty database.
//!
//! The entries are checked against both hash chains on the way in, exactly as
//! `herald audit verify` checks the log, and written with their positions,
//! event ids, times and links as exported, in one transaction: a file that
//! breaks anywhere leaves the database as it was. The relay's cursor is set
//! past them, so it sequences only what is written after the restore, and
//! publishes the restored entries to a stream that lacks them; every follower
//! then builds its read model from position 1.

use sqlx::{PgPool, Postgres, Transaction};

use super::chain::{AuditEntry, Checkpoint, Sealed, Verification, Verifier};

/// Entries written per statement.
const RESTORE_BATCH: usize = 2000;

/// Why a restore wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The log is restored only into a database that holds no events.
    #[error("the database already holds events: a log is restored into an empty database")]
    NotEmpty,
    /// The export holds no entries.
    #[error("the export holds no entries")]
    Empty,
    /// The export is not the log its chains were computed over.
    #[error("the export is not intact at position {position}: {reason}")]
    Broken {
        /// The first position that does not check.
        position: i64,
        /// What is wrong there.
        reason: String,
    },
    /// Postgres failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl RestoreError {
    fn broken(verification: Verification) -> Self {
        Self::Broken {
            position: verification.first_bad_position.unwrap_or_default(),
            reason: verification.reason.unwrap_or_default(),
        }
    }
}

/// A restore under way: entries pushed in position order are checked and
/// written inside one transaction, which [`Restore::commit`] ends.
pub struct Restore {
    tx: Transaction<'static, Postgres>,
    chain: Verifier,
    batch: Vec<AuditEntry>,
    last_event_id: i64,
}

impl Restore {
    /// Starts a restore into the database of `pool`, which must hold no
    /// events. `expect` is a checkpoint kept outside the database that the
    /// restored chain must pass through, which also shows a file cut short
    /// at a line's end.
    pub async fn begin(pool: &PgPool, expect: Option<Checkpoint>) -> Result<Self, RestoreError> {
        let mut tx = pool.begin().await?;
        // Nothing else writes events until the restore ends.
        sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let holds_events: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM events)")
            .fetch_one(&mut *tx)
            .await?;
        if holds_events {
            return Err(RestoreError::NotEmpty);
        }
        Ok(Self {
            tx,
            chain: Verifier::new(expect),
            batch: Vec::with_capacity(RESTORE_BATCH),
            last_event_id: 0,
        })
    }

    /// Adds the next entry of the export.
    pub async fn push(&mut self, entry: AuditEntry) -> Result<(), RestoreError> {
        self.batch.push(entry);
        if self.batch.len() == RESTORE_BATCH {
            self.write_batch().await?;
        }
        Ok(())
    }

    /// Checks the gathered entries and writes them.
    async fn write_batch(&mut self) -> Result<(), RestoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let sealed: Vec<Sealed> = batch.iter().map(Sealed::of).collect();
        self.chain
            .check_batch(&mut self.tx, &sealed)
            .await?
            .map_err(RestoreError::broken)?;
        let mut rows = Rows::default();
        for AuditEntry {
            entry,
            hash,
            aggregate_hash,
        } in batch
        {
            self.last_event_id = self.last_event_id.max(entry.event_id);
            rows.positions.push(entry.position);
            rows.event_ids.push(entry.event_id);
            rows.aggregate_types.push(entry.aggregate_type);
            rows.aggregate_ids.push(entry.aggregate_id);
            rows.sequences.push(entry.sequence);
            rows.event_types.push(entry.event_type);
            rows.event_versions.push(entry.event_version);
            rows.payloads.push(entry.payload);
            rows.metadata.push(entry.metadata);
            rows.recorded_at.push(entry.recorded_at);
            // A checked entry has both links.
            rows.hashes.push(hash.unwrap_or_default());
            rows.aggregate_hashes
                .push(aggregate_hash.unwrap_or_default());
        }
        sqlx::query(
            "WITH stored AS (
                 INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, event_id, recorded_at)
                 OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($3::text[], $4::text[], $5::bigint[], $6::text[],
                                      $7::text[], $8::jsonb[], $9::jsonb[], $2::bigint[],
                                      $10::timestamptz[])
                 RETURNING event_id)
             INSERT INTO event_log (position, event_id, hash, aggregate_hash)
             SELECT l.position, l.event_id, l.hash, l.aggregate_hash
               FROM unnest($1::bigint[], $2::bigint[], $11::bytea[], $12::bytea[])
                    AS l (position, event_id, hash, aggregate_hash)
               JOIN stored USING (event_id)",
        )
        .bind(&rows.positions)
        .bind(&rows.event_ids)
        .bind(&rows.aggregate_types)
        .bind(&rows.aggregate_ids)
        .bind(&rows.sequences)
        .bind(&rows.event_types)
        .bind(&rows.event_versions)
        .bind(&rows.payloads)
        .bind(&rows.metadata)
        .bind(&rows.recorded_at)
        .bind(&rows.hashes)
        .bind(&rows.aggregate_hashes)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Checks and writes what is left, moves the relay's cursor and the
    /// event ids past the restored entries, and commits. Returns the
    /// verification of the whole export, whose head is the restored log's.
    pub async fn commit(mut self) -> Result<Verification, RestoreError> {
        self.write_batch().await?;
        let verification = self.chain.finish();
        if !verification.ok {
            return Err(RestoreError::broken(verification));
        }
        let Some(head) = verification.head else {
            return Err(RestoreError::Empty);
        };
        sqlx::query(
            "WITH cursor AS (
                 UPDATE relay_cursor
                    SET sequenced_xid = pg_current_xact_id(), sequenced_event_id = $1,
                        sequenced_position = $2, hashed_position = $2)
             SELECT setval(pg_get_serial_sequence('events', 'event_id'), $1)",
        )
        .bind(self.last_event_id)
        .bind(head.position)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(verification)
    }
}

/// One batch's columns, as the restoring statement takes them.
#[derive(Default)]
struct Rows {
    positions: Vec<i64>,
    event_ids: Vec<i64>,
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
    recorded_at: Vec<chrono::DateTime<chrono::Utc>>,
    hashes: Vec<Vec<u8>>,
    aggregate_hashes: Vec<Vec<u8>>,
}
