//! Tamper evidence: the sequenced log linked into SHA-256 hash chains.
//!
//! The relay, as the log's single sequencer, links every entry it numbers into
//! two chains in the same transaction:
//!
//! * the **log chain**, in position order:
//!   `hash(n) = SHA-256(hash(n-1) ‖ canonical(n))`, `hash(0)` = 32 zero bytes;
//! * the **aggregate chain**, one per aggregate, in sequence order:
//!   `aggregate_hash(k) = SHA-256(aggregate_hash(k-1) ‖ canonical(k))`, with 32
//!   zero bytes before sequence 1, so one aggregate's history can be checked
//!   without the rest of the log.
//!
//! `canonical(n)` is [`canonical_bytes`]: a JSON document of the entry with
//! sorted keys and no whitespace, which an auditor can reproduce with any JSON
//! library (README's "Audit" section shows how). Anyone who edits, deletes,
//! reorders or inserts a row directly in SQL breaks the chain at that position,
//! unless they recompute every hash after it; a head kept outside the database
//! ([`Checkpoint`]) catches that, and a truncated tail, too.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use chrono::SecondsFormat;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio::sync::mpsc;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

pub use super::canonical::canonical_bytes;
use super::canonical::{Fields, JsonbText};
use super::copy;
use crate::{log, LogEntry};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// What the first entry of every chain is linked to.
pub const GENESIS: Hash = [0; 32];

/// Entries read per query while verifying: large enough that round trips do not
/// dominate, small enough that memory stays flat whatever the log's length.
const VERIFY_BATCH: i64 = 5000;
/// Batches read side by side while verifying.
const VERIFY_READERS: usize = 2;

/// The link after `previous` for `entry`: `SHA-256(previous ‖ canonical(entry))`.
pub fn link(previous: &Hash, entry: &LogEntry) -> Hash {
    link_canonical(previous, &canonical_bytes(entry))
}

/// [`link`] of an entry already in its canonical form, so that one form
/// serves both of its chains.
fn link_canonical(previous: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// A point of the log chain an auditor keeps outside the database: the chain
/// must still pass through it later, so nothing at or before it was changed
/// and the log was not cut short of it. Written `<position>:<hex hash>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
pub struct Checkpoint {
    /// The entry's position.
    pub position: i64,
    /// The log chain's hash at that position, hex in JSON.
    #[schema(value_type = String)]
    pub hash: Hash,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.position, hex::encode(self.hash))
    }
}

/// A checkpoint that is not `<position>:<64 hex digits>`.
#[derive(Debug, thiserror::Error)]
#[error("a checkpoint is `<position>:<64 hex digits>`, as `herald audit checkpoint` prints it")]
pub struct BadCheckpoint;

impl FromStr for Checkpoint {
    type Err = BadCheckpoint;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (position, hash) = text.trim().split_once(':').ok_or(BadCheckpoint)?;
        let position = position
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or(BadCheckpoint)?;
        let mut bytes = GENESIS;
        hex::decode_to_slice(hash, &mut bytes).map_err(|_| BadCheckpoint)?;
        Ok(Self {
            position,
            hash: bytes,
        })
    }
}

impl Serialize for Checkpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown {
            position: i64,
            hash: String,
        }
        Shown {
            position: self.position,
            hash: hex::encode(self.hash),
        }
        .serialize(serializer)
    }
}

/// The aggregate-chain hash of the last entry linked (by the sequencer) or
/// checked (by the verifier), for the aggregates seen most recently, so that
/// the next event of a busy aggregate links to its predecessor without asking
/// Postgres. A head is kept with its sequence and only serves the entry right
/// after it; any other is looked up in the log. Heads are computed from the
/// log alone, so one kept from a transaction that rolled back is what the
/// retry computes again.
#[derive(Debug)]
pub(crate) struct Heads {
    /// By aggregate type, then id: the head's sequence and hash.
    heads: FastMap<String, FastMap<String, (i64, Hash)>>,
    kept: usize,
    limit: usize,
}

/// A map keyed by aggregate, looked up once or twice per entry linked or
/// checked: hashed with foldhash, several times quicker than the default's
/// SipHash on such short keys, and seeded at random all the same.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Most aggregates whose heads the sequencer keeps; past it they are
/// forgotten at once.
const HEADS_KEPT: usize = 65_536;

/// Most aggregates whose heads the verifier keeps (about 150 MB): enough that
/// a log of tens of millions of events is checked without looking one up.
const VERIFY_HEADS_KEPT: usize = 1 << 20;

impl Default for Heads {
    fn default() -> Self {
        Self::keeping(HEADS_KEPT)
    }
}

impl Heads {
    /// Heads of at most `limit` aggregates.
    fn keeping(limit: usize) -> Self {
        Self {
            heads: FastMap::default(),
            kept: 0,
            limit,
        }
    }

    /// The aggregate-chain hash before `entry`, when it is kept.
    fn before(&self, entry: &impl Chained) -> Option<Hash> {
        let (aggregate_type, aggregate_id, sequence) = entry.in_aggregate();
        if sequence == 1 {
            return Some(GENESIS);
        }
        self.heads
            .get(aggregate_type)?
            .get(aggregate_id)
            .filter(|(kept, _)| *kept == sequence - 1)
            .map(|(_, hash)| *hash)
    }

    /// Forgets every head once more than its limit are kept; called between
    /// batches, never while one is being linked.
    fn forget_if_full(&mut self) {
        if self.kept > self.limit {
            self.heads.clear();
            self.kept = 0;
        }
    }

    fn keep(&mut self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: Hash) {
        if !self.heads.contains_key(aggregate_type) {
            self.heads
                .insert(aggregate_type.to_owned(), FastMap::default());
        }
        if let Some(of_type) = self.heads.get_mut(aggregate_type) {
            // Only an aggregate not kept yet pays for its id's copy.
            match of_type.get_mut(aggregate_id) {
                Some(head) => *head = (sequence, hash),
                None => {
                    of_type.insert(aggregate_id.to_owned(), (sequence, hash));
                    self.kept += 1;
                }
            }
        }
    }
}

/// What the chains need to know of an entry besides its canonical form.
pub(crate) trait Chained {
    /// Its position in the log.
    fn position(&self) -> i64;
    /// Its aggregate's type and id, and its sequence there.
    fn in_aggregate(&self) -> (&str, &str, i64);
}

impl Chained for LogEntry {
    fn position(&self) -> i64 {
        self.position
    }

    fn in_aggregate(&self) -> (&str, &str, i64) {
        (&self.aggregate_type, &self.aggregate_id, self.sequence)
    }
}

/// Both chains' links of a run of consecutive entries, in their order.
pub(crate) struct Links {
    pub(crate) hashes: Vec<Vec<u8>>,
    pub(crate) aggregate_hashes: Vec<Vec<u8>>,
}

/// Links `entries`, consecutive and in position order, into both chains:
/// the log chain continues from `previous`, the hash of the entry before the
/// first, and each aggregate chain from its head (kept, linked earlier in
/// this run, or looked up in the log).
pub(crate) async fn link_entries(
    tx: &mut PgConnection,
    heads: &mut Heads,
    mut previous: Hash,
    entries: &[LogEntry],
) -> Result<Links, sqlx::Error> {
    heads.forget_if_full();
    look_up_heads(tx, heads, entries).await?;
    let mut links = Links {
        hashes: Vec::with_capacity(entries.len()),
        aggregate_hashes: Vec::with_capacity(entries.len()),
    };
    for entry in entries {
        let previous_aggregate = heads.before(entry).unwrap_or_else(|| {
            tracing::error!(
                position = entry.position,
                aggregate_type = entry.aggregate_type,
                aggregate_id = entry.aggregate_id,
                sequence = entry.sequence,
                "the aggregate's previous event is not in the log; its chain restarts here"
            );
            GENESIS
        });
        let canonical = canonical_bytes(entry);
        previous = link_canonical(&previous, &canonical);
        let aggregate = link_canonical(&previous_aggregate, &canonical);
        heads.keep(
            &entry.aggregate_type,
            &entry.aggregate_id,
            entry.sequence,
            aggregate,
        );
        links.hashes.push(previous.to_vec());
        links.aggregate_hashes.push(aggregate.to_vec());
    }
    Ok(links)
}

/// The log-chain hash stored at `position` (the genesis before position 1).
/// Whatever is stored is what the chain continues from: a tampered head is
/// the verifier's to report, not a reason to stop numbering.
pub(crate) fn stored_head(position: i64, stored: Option<Vec<u8>>) -> Hash {
    if position == 0 {
        return GENESIS;
    }
    stored.as_deref().and_then(as_hash).unwrap_or(GENESIS)
}

/// Links entries numbered before the hash chains existed: positions after
/// the relay's `hashed_position` up to `up_to` (at most `limit` of them),
/// inside the sequencer's transaction. Returns the new `hashed_position`.
pub(crate) async fn hash_through(
    tx: &mut PgConnection,
    heads: &mut Heads,
    hashed: i64,
    previous: Hash,
    up_to: i64,
    limit: i64,
) -> Result<i64, sqlx::Error> {
    let entries = log::read_after(&mut *tx, hashed, (up_to - hashed).min(limit)).await?;
    let Some(last) = entries.last().map(|entry| entry.position) else {
        return Ok(hashed);
    };
    let links = link_entries(tx, heads, previous, &entries).await?;
    let positions: Vec<i64> = entries.iter().map(|entry| entry.position).collect();
    sqlx::query(
        "WITH linked AS (
           UPDATE event_log l SET hash = t.hash, aggregate_hash = t.aggregate_hash
             FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS t(position, hash, aggregate_hash)
            WHERE l.position = t.position)
         UPDATE relay_cursor SET hashed_position = $4",
    )
    .bind(&positions)
    .bind(&links.hashes)
    .bind(&links.aggregate_hashes)
    .bind(last)
    .execute(&mut *tx)
    .await?;
    Ok(last)
}

/// Keeps the aggregate-chain hashes, already in the log before the first of
/// `entries` (consecutive, in position order), of the events just before
/// those of `entries` (sequence − 1) that are neither kept nor among `entries`
/// themselves.
async fn look_up_heads(
    tx: &mut PgConnection,
    heads: &mut Heads,
    entries: &[impl Chained],
) -> Result<(), sqlx::Error> {
    let Some(first) = entries.first().map(Chained::position) else {
        return Ok(());
    };
    let linked_here: HashSet<(&str, &str, i64)> =
        entries.iter().map(Chained::in_aggregate).collect();
    let wanted: Vec<(&str, &str, i64)> = entries
        .iter()
        .filter(|e| heads.before(*e).is_none())
        .map(Chained::in_aggregate)
        .filter(|(aggregate_type, aggregate_id, sequence)| {
            !linked_here.contains(&(aggregate_type, aggregate_id, sequence - 1))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = wanted.iter().map(|(t, _, _)| *t).collect();
    let ids: Vec<&str> = wanted.iter().map(|(_, id, _)| *id).collect();
    let sequences: Vec<i64> = wanted.iter().map(|(_, _, sequence)| sequence - 1).collect();
    let rows: Vec<(String, String, i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence, l.aggregate_hash
           FROM unnest($1::text[], $2::text[], $3::bigint[]) AS p(aggregate_type, aggregate_id, sequence)
           JOIN events e USING (aggregate_type, aggregate_id, sequence)
           JOIN event_log l ON l.event_id = e.event_id
          WHERE l.aggregate_hash IS NOT NULL AND l.position < $4",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(first)
    .fetch_all(&mut *tx)
    .await?;
    for (aggregate_type, aggregate_id, sequence, hash) in rows {
        if let Some(hash) = hash.as_deref().and_then(as_hash) {
            heads.keep(&aggregate_type, &aggregate_id, sequence, hash);
        }
    }
    Ok(())
}

/// A stored link, when it is one.
fn as_hash(bytes: &[u8]) -> Option<Hash> {
    Hash::try_from(bytes).ok()
}

/// What a verification of the log found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Verification {
    /// True when every entry links to the one before it, in both chains, and
    /// the expected checkpoint (if any) is on the chain.
    pub ok: bool,
    /// Entries found intact, from position 1 on.
    pub events_checked: i64,
    /// The first position where the log is not what was hashed: an entry
    /// changed, missing, moved or inserted there, or, with an expected
    /// checkpoint beyond the end, the first position cut off.
    pub first_bad_position: Option<i64>,
    /// What is wrong at `first_bad_position`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last intact entry: what `herald audit checkpoint` prints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<Checkpoint>,
}

/// Recomputes both chains over the log as long as it was when the check
/// began, and stops at the first entry that does not link. `expect` is a
/// checkpoint kept outside the database that the chain must pass through.
/// `progress` is told the entries checked so far and the log's length.
///
/// The log is read in batches by position with binary `COPY`, two at once on
/// connections of their own, and each batch is put in its canonical form and
/// linked within itself on a blocking thread, so memory stays flat and
/// Postgres and the hashing use every core; the links are then checked in
/// position order.
pub async fn verify(
    pool: &PgPool,
    expect: Option<Checkpoint>,
    mut progress: impl FnMut(i64, i64),
) -> Result<Verification, sqlx::Error> {
    let total: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
        .fetch_one(pool)
        .await?;
    // When the check ends early it drops `received`, which stops the reads.
    let (batches, mut received) = mpsc::channel::<Vec<Sealed>>(VERIFY_READERS);
    let check = async move {
        // For the aggregate heads the verifier no longer keeps.
        let mut conn = pool.acquire().await?;
        let mut chain = Verifier::new(expect);
        while let Some(rows) = received.recv().await {
            if let Err(failed) = chain.check_batch(&mut conn, &rows).await? {
                return Ok(failed);
            }
            progress(chain.verification.events_checked, total);
        }
        Ok::<_, sqlx::Error>(chain.finish())
    };
    let reads = futures::stream::iter((0..total).step_by(VERIFY_BATCH as usize))
        .map(|after| {
            let up_to = (after + VERIFY_BATCH).min(total);
            tokio::spawn(read_sealed(pool.clone(), after, up_to))
        })
        .buffered(VERIFY_READERS)
        .map(|read| read.unwrap_or_else(|err| Err(super::joined(err))));
    let read = async move {
        futures::pin_mut!(reads);
        while let Some(rows) = reads.try_next().await? {
            if batches.send(rows).await.is_err() {
                break;
            }
        }
        Ok(())
    };
    let (verification, ()) = tokio::try_join!(check, read)?;
    Ok(verification)
}

/// Reads the log entries after `after` up to and including `up_to` with a
/// binary `COPY`, and seals them on a blocking thread.
async fn read_sealed(pool: PgPool, after: i64, up_to: i64) -> Result<Vec<Sealed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Parallel workers started for every batch cost Postgres more than the
    // join they would share; the batches are already read side by side.
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *tx)
        .await?;
    let data = copy::copy_out(
        &mut tx,
        &format!(
            "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
                    e.event_type, e.event_version, e.payload::text, e.metadata::text,
                    e.recorded_at, l.hash, l.aggregate_hash
               FROM event_log l JOIN events e ON e.event_id = l.event_id
              WHERE l.position > {after} AND l.position <= {up_to}
              ORDER BY l.position"
        ),
    )
    .await?;
    tx.commit().await?;
    tokio::task::spawn_blocking(move || seal(&data))
        .await
        .map_err(super::joined)?
}

/// Puts the entries of a binary `COPY` of [`read_sealed`]'s columns in their
/// canonical form, and links each to the entries before it in the same
/// batch, as the verifier would once it has checked those: in the log chain
/// to the entry just before, in its aggregate's chain to its predecessor
/// there (or the genesis). The verifier then links only the entries whose
/// predecessor is in an earlier batch.
fn seal(data: &[bytes::Bytes]) -> Result<Vec<Sealed>, sqlx::Error> {
    // The twelve columns, in order.
    let mut tuples = copy::Tuples::new(data, 12)?;
    let mut sealed = Vec::new();
    while let Some(mut field) = tuples.next_tuple()? {
        let (position, event_id) = (field.int8()?, field.int8()?);
        let (aggregate_type, aggregate_id) = (field.text()?, field.text()?);
        let sequence = field.int8()?;
        let (event_type, event_version) = (field.text()?, field.text()?);
        let (payload, metadata) = (field.text()?, field.text()?);
        let fields = Fields {
            position,
            event_id,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            recorded_at: field.timestamptz()?,
        };
        sealed.push(Sealed {
            position,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            canonical: fields.canonical(&JsonbText(payload), &JsonbText(metadata)),
            hash: field.bytea()?.and_then(as_hash),
            aggregate_hash: field.bytea()?.and_then(as_hash),
            link: None,
            aggregate_link: None,
        });
    }
    let mut previous: Option<Hash> = None;
    let mut heads: FastMap<(&str, &str), (i64, Option<Hash>)> = FastMap::default();
    let mut links = Vec::with_capacity(sealed.len());
    for entry in &sealed {
        let link = previous.map(|previous| link_canonical(&previous, &entry.canonical));
        let (aggregate_type, aggregate_id, sequence) = entry.in_aggregate();
        let before = if sequence == 1 {
            Some(GENESIS)
        } else {
            heads
                .get(&(aggregate_type, aggregate_id))
                .filter(|(kept, _)| *kept == sequence - 1)
                .and_then(|(_, hash)| *hash)
        };
        links.push((
            link,
            before.map(|before| link_canonical(&before, &entry.canonical)),
        ));
        previous = entry.hash;
        heads.insert(
            (aggregate_type, aggregate_id),
            (sequence, entry.aggregate_hash),
        );
    }
    for (entry, (link, aggregate_link)) in sealed.iter_mut().zip(links) {
        entry.link = link;
        entry.aggregate_link = aggregate_link;
    }
    Ok(sealed)
}

/// An entry as the verifier checks it: where it is, its canonical form, and
/// the links stored beside it.
pub(crate) struct Sealed {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    canonical: Vec<u8>,
    /// The links stored beside it, when they are links at all.
    hash: Option<Hash>,
    aggregate_hash: Option<Hash>,
    /// Its log-chain link from the stored hash of the entry just before it,
    /// when that was read with it.
    link: Option<Hash>,
    /// Its aggregate-chain link from the stored hash of its predecessor in
    /// the aggregate, when that was read with it.
    aggregate_link: Option<Hash>,
}

impl Sealed {
    /// An exported entry, to check before it is restored.
    pub(crate) fn of(row: &AuditEntry) -> Self {
        let entry = &row.entry;
        Self {
            position: entry.position,
            aggregate_type: entry.aggregate_type.clone(),
            aggregate_id: entry.aggregate_id.clone(),
            sequence: entry.sequence,
            canonical: canonical_bytes(entry),
            hash: row.hash.as_deref().and_then(as_hash),
            aggregate_hash: row.aggregate_hash.as_deref().and_then(as_hash),
            link: None,
            aggregate_link: None,
        }
    }
}

impl Chained for Sealed {
    fn position(&self) -> i64 {
        self.position
    }

    fn in_aggregate(&self) -> (&str, &str, i64) {
        (&self.aggregate_type, &self.aggregate_id, self.sequence)
    }
}

/// Both chains recomputed entry by entry, in position order.
pub(crate) struct Verifier {
    expect: Option<Checkpoint>,
    previous: Hash,
    position: i64,
    /// Each aggregate's last link checked, or looked up in the log before
    /// the batch being checked.
    heads: Heads,
    verification: Verification,
}

impl Verifier {
    pub(crate) fn new(expect: Option<Checkpoint>) -> Self {
        Self {
            expect,
            previous: GENESIS,
            position: 0,
            heads: Heads::keeping(VERIFY_HEADS_KEPT),
            verification: Verification {
                ok: true,
                events_checked: 0,
                first_bad_position: None,
                reason: None,
                head: None,
            },
        }
    }

    /// Checks the next rows, consecutive and in position order; on a break,
    /// the verification that names it. The heads of aggregates it no longer
    /// keeps are looked up through `conn` in the log before the first row.
    pub(crate) async fn check_batch(
        &mut self,
        conn: &mut PgConnection,
        rows: &[Sealed],
    ) -> Result<Result<(), Verification>, sqlx::Error> {
        self.heads.forget_if_full();
        look_up_heads(conn, &mut self.heads, rows).await?;
        Ok(rows.iter().try_for_each(|row| self.check(row)))
    }

    /// Checks the next row; on a break, the verification that names it.
    fn check(&mut self, row: &Sealed) -> Result<(), Verification> {
        let at = self.position + 1;
        if row.position != at {
            return Err(self.fail(at, format!("position {at} is missing from the log")));
        }
        // A link sealed with the batch started from the stored hash of the
        // entry before, which is `previous` once that entry has passed.
        let computed = row
            .link
            .unwrap_or_else(|| link_canonical(&self.previous, &row.canonical));
        if row.hash != Some(computed) {
            return Err(self.fail(
                at,
                "the entry does not match its hash: it was changed, moved or inserted, or an entry before it was removed".to_owned(),
            ));
        }
        let aggregate = row
            .aggregate_link
            .or_else(|| {
                self.heads
                    .before(row)
                    .map(|before| link_canonical(&before, &row.canonical))
            })
            .filter(|computed| row.aggregate_hash == Some(*computed));
        let Some(aggregate) = aggregate else {
            return Err(self.fail(
                at,
                format!(
                    "the chain of {} {} breaks at its event {}",
                    row.aggregate_type, row.aggregate_id, row.sequence
                ),
            ));
        };
        if let Some(expected) = self.expect.filter(|e| e.position == at) {
            if expected.hash != computed {
                return Err(self.fail(
                    at,
                    format!("the chain no longer passes through the checkpoint {expected}"),
                ));
            }
        }
        self.heads.keep(
            &row.aggregate_type,
            &row.aggregate_id,
            row.sequence,
            aggregate,
        );
        self.previous = computed;
        self.position = at;
        self.verification.events_checked += 1;
        self.verification.head = Some(Checkpoint {
            position: at,
            hash: computed,
        });
        Ok(())
    }

    /// The verification once the log has ended.
    pub(crate) fn finish(mut self) -> Verification {
        let position = self.position;
        match self.expect.filter(|e| e.position > position) {
            Some(expected) => self.fail(
                position + 1,
                format!("the log ends at position {position}, before the checkpoint {expected}"),
            ),
            None => self.verification,
        }
    }

    fn fail(&mut self, at: i64, reason: String) -> Verification {
        let mut verification = self.verification.clone();
        verification.ok = false;
        verification.first_bad_position = Some(at);
        verification.reason = Some(reason);
        verification
    }
}

/// One entry as auditors read it: the entry and its two links.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    /// The entry.
    #[sqlx(flatten)]
    pub entry: LogEntry,
    /// Its link in the log chain, once hashed.
    pub hash: Option<Vec<u8>>,
    /// Its link in its aggregate's chain, once hashed.
    pub aggregate_hash: Option<Vec<u8>>,
}

/// How auditors see an entry, in the API and in `herald events export`: the
/// ten hashed fields as stored (`recorded_at` in the canonical form), `metadata`
/// with `recorded_at` added for readers (it is a column, not part of the
/// stored metadata), and both links in lowercase hex.
#[derive(Serialize, ToSchema)]
struct ShownEntry<'a> {
    /// Dense position in commit order, from 1.
    #[schema(minimum = 1)]
    position: i64,
    /// The event's identity in the store.
    event_id: i64,
    /// `Chat`, `Booking` or `Payment`.
    aggregate_type: &'a str,
    /// The aggregate's id.
    aggregate_id: &'a str,
    /// The event's sequence within its aggregate, from 1.
    #[schema(minimum = 1)]
    sequence: i64,
    /// The event's type, e.g. `MessageSent`.
    event_type: &'a str,
    /// The version of the payload's shape.
    event_version: &'a str,
    /// The event as stored.
    #[schema(value_type = Object)]
    payload: &'a Value,
    /// `actor, role, correlation_id, causation_id` (and `idempotency_key,
    /// request_hash` for commands sent with one) plus `recorded_at`.
    #[schema(value_type = Object)]
    metadata: Value,
    /// When the event was stored, RFC 3339 with microseconds.
    recorded_at: String,
    /// Its link in the log's hash chain (hex), once the relay linked it.
    hash: Option<String>,
    /// Its link in its aggregate's hash chain (hex), once linked.
    aggregate_hash: Option<String>,
}

impl Serialize for AuditEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entry = &self.entry;
        let recorded_at = entry
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut metadata = entry.metadata.clone();
        if let Value::Object(members) = &mut metadata {
            members.insert("recorded_at".to_owned(), Value::from(recorded_at.clone()));
        }
        ShownEntry {
            position: entry.position,
            event_id: entry.event_id,
            aggregate_type: &entry.aggregate_type,
            aggregate_id: &entry.aggregate_id,
            sequence: entry.sequence,
            event_type: &entry.event_type,
            event_version: &entry.event_version,
            payload: &entry.payload,
            metadata,
            recorded_at,
            hash: self.hash.as_ref().map(hex::encode),
            aggregate_hash: self.aggregate_hash.as_ref().map(hex::encode),
        }
        .serialize(serializer)
    }
}

/// Reads an entry back from the form it is serialized in, as `herald events
/// import` does: `recorded_at` leaves `metadata` again, and the links are
/// hex.
impl<'de> Deserialize<'de> for AuditEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shown {
            #[serde(flatten)]
            entry: LogEntry,
            hash: Option<String>,
            aggregate_hash: Option<String>,
        }
        let Shown {
            mut entry,
            hash,
            aggregate_hash,
        } = Shown::deserialize(deserializer)?;
        if let Value::Object(members) = &mut entry.metadata {
            members.remove("recorded_at");
        }
        let bytes = |hex: Option<String>| {
            hex.map(|hex| hex::decode(hex).map_err(serde::de::Error::custom))
                .transpose()
        };
        Ok(Self {
            entry,
            hash: bytes(hash)?,
            aggregate_hash: bytes(aggregate_hash)?,
        })
    }
}

/// An entry is described by the form it is serialized in.
impl PartialSchema for AuditEntry {
    fn schema() -> RefOr<Schema> {
        ShownEntry::schema()
    }
}

impl ToSchema for AuditEntry {}

const SELECT_AUDIT_ENTRIES: &str = "
    SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
           e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at,
           l.hash, l.aggregate_hash
      FROM event_log l JOIN events e ON e.event_id = l.event_id";

/// Up to `limit` entries after `position` in position order, of one aggregate
/// type when `aggregate_type` is given.
pub async fn entries_after<'c>(
    executor: impl PgExecutor<'c>,
    position: i64,
    limit: i64,
    aggregate_type: Option<&str>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT_AUDIT_ENTRIES}
          WHERE l.position > $1 AND ($3::text IS NULL OR e.aggregate_type = $3)
          ORDER BY l.position LIMIT $2"
    ))
    .bind(position)
    .bind(limit)
    .bind(aggregate_type)
    .fetch_all(executor)
    .await
}

/// How far into the log an aggregate is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Everything sequenced so far.
    Now,
    /// Entries at or before this position.
    Position(i64),
    /// Entries recorded at or before this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// An aggregate's sequenced events in order, up to `as_of`.
pub async fn aggregate_entries<'c>(
    executor: impl PgExecutor<'c>,
    aggregate_type: &str,
    aggregate_id: &str,
    as_of: AsOf,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let (position, time) = match as_of {
        AsOf::Now => (None, None),
        AsOf::Position(position) => (Some(position), None),
        AsOf::Time(time) => (None, Some(time)),
    };
    sqlx::query_as(&format!(
        "{SELECT_AUDIT_ENTRIES}
          WHERE e.aggregate_type = $1 AND e.aggregate_id = $2
            AND ($3::bigint IS NULL OR l.position <= $3)
            AND ($4::timestamptz IS NULL OR e.recorded_at <= $4)
          ORDER BY e.sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(position)
    .bind(time)
    .fetch_all(executor)
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use serde_json::json;

    fn entry() -> LogEntry {
        LogEntry {
            position: 7,
            event_id: 42,
            aggregate_type: "Chat".to_owned(),
            aggregate_id: "c".to_owned(),
            sequence: 3,
            event_type: "MessageSent".to_owned(),
            event_version: "1".to_owned(),
            payload: json!({"MessageSent": {"z": 1, "a": ["é\n", null, true]}}),
            metadata: json!({"role": "doctor", "actor": "u"}),
            recorded_at: DateTime::from_timestamp(1_700_000_000, 5_000).unwrap(),
        }
    }

    #[test]
    fn the_canonical_form_sorts_keys_at_every_depth_and_has_no_whitespace() {
        let text = String::from_utf8(canonical_bytes(&entry())).unwrap();
        assert_eq!(
            text,
            r#"{"aggregate_id":"c","aggregate_type":"Chat","event_id":42,"event_type":"MessageSent","event_version":"1","metadata":{"actor":"u","role":"doctor"},"payload":{"MessageSent":{"a":["é\n",null,true],"z":1}},"position":7,"recorded_at":"2023-11-14T22:13:20.000005Z","sequence":3}"#
        );
    }

    #[test]
    fn a_link_is_sha256_of_the_previous_hash_then_the_canonical_bytes() {
        let previous = [7u8; 32];
        let mut input = previous.to_vec();
        input.extend(canonical_bytes(&entry()));
        let expected: Hash = Sha256::digest(&input).into();
        assert_eq!(link(&previous, &entry()), expected);
        let mut changed = entry();
        changed.payload["MessageSent"]["z"] = json!(2);
        assert_ne!(link(&previous, &changed), expected);
    }

    #[test]
    fn a_checkpoint_reads_back_what_it_prints() {
        let checkpoint = Checkpoint {
            position: 12,
            hash: [0xab; 32],
        };
        let text = checkpoint.to_string();
        assert_eq!(text, format!("12:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<Checkpoint>().unwrap(), checkpoint);
        for bad in [
            "12",
            "0:00",
            "x:ab",
            "12:abc",
            &format!("-1:{}", "ab".repeat(32)),
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad}");
        }
    }
}
