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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio::sync::mpsc;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::{log, LogEntry};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// What the first entry of every chain is linked to.
pub const GENESIS: Hash = [0; 32];

/// Entries read per query while verifying: large enough that round trips do not
/// dominate, small enough that memory stays flat whatever the log's length.
const VERIFY_BATCH: i64 = 5000;

/// The bytes an entry is hashed as: the JSON object
/// `{aggregate_id, aggregate_type, event_id, event_type, event_version, metadata,
/// payload, position, recorded_at, sequence}` with the keys of every object, at
/// every depth, in ascending byte order, no whitespace, strings escaped as
/// RFC 8259 requires (only `"`, `\` and control characters; other characters
/// as UTF-8), and `recorded_at` as RFC 3339 UTC with six fractional digits and
/// `Z`, the precision Postgres stores.
pub fn canonical_bytes(entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    field(&mut out, "aggregate_id", true);
    write_string(&mut out, &entry.aggregate_id);
    field(&mut out, "aggregate_type", false);
    write_string(&mut out, &entry.aggregate_type);
    field(&mut out, "event_id", false);
    out.extend_from_slice(entry.event_id.to_string().as_bytes());
    field(&mut out, "event_type", false);
    write_string(&mut out, &entry.event_type);
    field(&mut out, "event_version", false);
    write_string(&mut out, &entry.event_version);
    field(&mut out, "metadata", false);
    write_canonical(&mut out, &entry.metadata);
    field(&mut out, "payload", false);
    write_canonical(&mut out, &entry.payload);
    field(&mut out, "position", false);
    out.extend_from_slice(entry.position.to_string().as_bytes());
    field(&mut out, "recorded_at", false);
    write_string(
        &mut out,
        &entry
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    field(&mut out, "sequence", false);
    out.extend_from_slice(entry.sequence.to_string().as_bytes());
    out.push(b'}');
    out
}

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

/// Starts a member of the canonical object.
fn field(out: &mut Vec<u8>, name: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    write_string(out, name);
    out.push(b':');
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Writes `value` with every object's keys sorted, whatever order the JSON
/// library keeps them in.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, &members[key]);
            }
            out.push(b'}');
        }
        scalar => {
            // Null, booleans, numbers and strings: serde_json's own compact form.
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
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
    heads: HashMap<(String, String), (i64, Hash)>,
    limit: usize,
}

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
            heads: HashMap::new(),
            limit,
        }
    }

    /// The aggregate-chain hash before `entry`, when it is kept.
    fn before(&self, entry: &LogEntry) -> Option<Hash> {
        if entry.sequence == 1 {
            return Some(GENESIS);
        }
        self.heads
            .get(&(entry.aggregate_type.clone(), entry.aggregate_id.clone()))
            .filter(|(sequence, _)| *sequence == entry.sequence - 1)
            .map(|(_, hash)| *hash)
    }

    /// Forgets every head once more than its limit are kept; called between
    /// batches, never while one is being linked.
    fn forget_if_full(&mut self) {
        if self.heads.len() > self.limit {
            self.heads.clear();
        }
    }

    fn keep(&mut self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: Hash) {
        self.heads.insert(
            (aggregate_type.to_owned(), aggregate_id.to_owned()),
            (sequence, hash),
        );
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
    look_up_heads(tx, heads, entries.iter()).await?;
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
    as_hash(&stored).unwrap_or(GENESIS)
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
async fn look_up_heads<'a>(
    tx: &mut PgConnection,
    heads: &mut Heads,
    entries: impl Iterator<Item = &'a LogEntry> + Clone,
) -> Result<(), sqlx::Error> {
    let Some(first) = entries.clone().next().map(|e| e.position) else {
        return Ok(());
    };
    let linked_here: HashSet<(&str, &str, i64)> = entries
        .clone()
        .map(|e| {
            (
                e.aggregate_type.as_str(),
                e.aggregate_id.as_str(),
                e.sequence,
            )
        })
        .collect();
    let wanted: Vec<&LogEntry> = entries
        .filter(|e| {
            heads.before(e).is_none()
                && !linked_here.contains(&(
                    e.aggregate_type.as_str(),
                    e.aggregate_id.as_str(),
                    e.sequence - 1,
                ))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = wanted.iter().map(|e| e.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = wanted.iter().map(|e| e.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = wanted.iter().map(|e| e.sequence - 1).collect();
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
        if let Some(hash) = as_hash(&hash) {
            heads.keep(&aggregate_type, &aggregate_id, sequence, hash);
        }
    }
    Ok(())
}

/// A stored link, when it is one.
fn as_hash(bytes: &Option<Vec<u8>>) -> Option<Hash> {
    bytes
        .as_deref()
        .and_then(|bytes| Hash::try_from(bytes).ok())
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

/// Recomputes both chains over the whole log, streaming it in batches by
/// position so memory stays flat, and stops at the first entry that does not
/// link. `expect` is a checkpoint kept outside the database that the chain
/// must pass through. `progress` is told the entries checked so far and the
/// log's length when the check began.
pub async fn verify(
    pool: &PgPool,
    expect: Option<Checkpoint>,
    mut progress: impl FnMut(i64, i64),
) -> Result<Verification, sqlx::Error> {
    let total: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
        .fetch_one(pool)
        .await?;
    // The next batch is read on its own connection while this one is checked;
    // when the check ends early it drops `received`, which stops the read.
    let (batches, mut received) = mpsc::channel::<Vec<AuditEntry>>(1);
    let check = async move {
        // For the aggregate heads the verifier no longer keeps.
        let mut conn = pool.acquire().await?;
        let mut chain = Verifier::new(expect);
        while let Some(rows) = received.recv().await {
            let last = rows.last().map_or(0, |row| row.entry.position);
            if let Err(failed) = chain.check_batch(&mut conn, &rows).await? {
                return Ok(failed);
            }
            progress(chain.verification.events_checked, total.max(last));
        }
        Ok::<_, sqlx::Error>(chain.finish())
    };
    let (verification, ()) = tokio::try_join!(check, read_for_verify(pool, batches))?;
    Ok(verification)
}

/// Reads the log for [`verify`] in batches by position, until the end or
/// until nobody listens.
async fn read_for_verify(
    pool: &PgPool,
    batches: mpsc::Sender<Vec<AuditEntry>>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut position = 0;
    loop {
        let rows: Vec<AuditEntry> = sqlx::query_as(&format!(
            "{SELECT_AUDIT_ENTRIES} WHERE l.position > $1 ORDER BY l.position LIMIT $2"
        ))
        .bind(position)
        .bind(VERIFY_BATCH)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last().map(|row| row.entry.position) else {
            return Ok(());
        };
        position = last;
        if batches.send(rows).await.is_err() {
            return Ok(());
        }
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
        rows: &[AuditEntry],
    ) -> Result<Result<(), Verification>, sqlx::Error> {
        self.heads.forget_if_full();
        look_up_heads(conn, &mut self.heads, rows.iter().map(|row| &row.entry)).await?;
        Ok(rows.iter().try_for_each(|row| self.check(row)))
    }

    /// Checks the next row; on a break, the verification that names it.
    fn check(&mut self, row: &AuditEntry) -> Result<(), Verification> {
        let entry = &row.entry;
        let at = self.position + 1;
        if entry.position != at {
            return Err(self.fail(at, format!("position {at} is missing from the log")));
        }
        let canonical = canonical_bytes(entry);
        let computed = link_canonical(&self.previous, &canonical);
        if as_hash(&row.hash) != Some(computed) {
            return Err(self.fail(
                at,
                "the entry does not match its hash: it was changed, moved or inserted, or an entry before it was removed".to_owned(),
            ));
        }
        let aggregate = self
            .heads
            .before(entry)
            .map(|before| link_canonical(&before, &canonical))
            .filter(|computed| as_hash(&row.aggregate_hash) == Some(*computed));
        let Some(aggregate) = aggregate else {
            return Err(self.fail(
                at,
                format!(
                    "the chain of {} {} breaks at its event {}",
                    entry.aggregate_type, entry.aggregate_id, entry.sequence
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
            &entry.aggregate_type,
            &entry.aggregate_id,
            entry.sequence,
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
