//! Replaying a projection from the log with no downtime for reads.
//!
//! The read model is rebuilt into shadow tables while the live ones keep
//! serving reads and the live worker keeps applying new entries: the log up
//! to the live checkpoint is folded in ([`crate::rebuild`]), then the entries
//! that arrived meanwhile are applied as the worker applies them, chasing the
//! checkpoint until it is close, and then one transaction:
//!
//! 1. locks the projection's checkpoint row, as every worker batch does, so the
//!    live workers pause at a known position;
//! 2. applies the few entries between the shadow and that position to the shadow;
//! 3. moves the live tables out of `public` and the shadow tables in
//!    (`ALTER TABLE … SET SCHEMA`), and commits.
//!
//! The checkpoint is not moved: the new tables hold exactly what the old ones
//! held at it, so the workers resume where they paused, missing nothing and
//! applying nothing twice. Reads in flight during the swap wait for it (a few
//! milliseconds) and then read the new tables. The old tables are dropped after.

use std::time::{Duration, Instant};

use herald_nats::follower::checkpoint;
use herald_nats::locks::{self, Commit};
use sqlx::{PgConnection, PgPool};

use crate::rebuild::{
    apply_range, create_shadow, fold_into, index_shadow, make_durable, quote_ident,
};
use crate::{ApplyError, Projection};

/// The rebuild stops chasing the live checkpoint and swaps once it is at most
/// this many entries behind: the rest are applied while the workers pause.
const SWAP_WITHIN: i64 = 2000;
/// How long the swap waits for reads in flight to let go of the live tables
/// before it gives up and tries again, so queued reads are never held long.
const SWAP_LOCK_TIMEOUT: &str = "2s";
/// How often, and how far apart, the swap tries to take the live tables
/// before it lets go of everything and starts over.
const LOCK_ATTEMPTS: u32 = 200;
const LOCK_PAUSE: Duration = Duration::from_millis(10);
/// Postgres's `lock_not_available`: a lock not taken in time, or at once.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// How often the swap is tried before the replay gives up.
const SWAP_ATTEMPTS: u32 = 5;

/// Why a replay did not finish; the live tables are untouched whenever it fails.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Another replay of the same projection is running.
    #[error("another replay of {0} is running")]
    Busy(Projection),
    /// An entry could not be applied, or Postgres failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl From<sqlx::Error> for ReplayError {
    fn from(err: sqlx::Error) -> Self {
        Self::Apply(ApplyError::Sql(err))
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// The projection replayed.
    pub projection: Projection,
    /// Log entries rebuilt into the new tables: every position the rebuild
    /// covered, whether or not the projection follows its aggregate.
    pub entries: i64,
    /// The checkpoint at the swap: the new tables hold the log up to here.
    pub position: i64,
    /// How long the rebuild took, swap included.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// Entries applied per second.
    pub fn rate(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Rebuilds `projection` from the log into shadow tables and swaps them in
/// atomically while reads and the live worker go on. `progress` is told the
/// position the rebuild reached and the live checkpoint it chases.
pub async fn replay(
    pool: &PgPool,
    projection: Projection,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    // Held for the whole replay on a connection that never returns to the pool,
    // so the lock ends with the replay whatever happens.
    let index = Projection::ALL
        .iter()
        .position(|p| *p == projection)
        .unwrap_or(0);
    let Some(_guard) = locks::try_hold(pool, locks::replay(index)).await? else {
        return Err(ReplayError::Busy(projection));
    };
    checkpoint::ensure(pool, projection.name()).await?;
    let shadow = format!("replay_{}", projection.name());
    let retired = format!("retired_{}", projection.name());
    create_shadow(pool, projection, &shadow).await?;
    // The bulk of the log is folded in; the rest, which arrived meanwhile, is
    // applied entry by entry, as the live worker does.
    let mut position = checkpoint::read(pool, projection.name()).await?;
    let chased = position;
    fold_into(pool, projection, &shadow, position, &|at| {
        progress(at, chased)
    })
    .await?;
    // Made durable before its indexes are built: switching a table to logged
    // rewrites its indexes too, while an index built on a logged table is
    // written to the log once.
    make_durable(pool, projection, &shadow).await?;
    index_shadow(pool, projection, &shadow).await?;
    let mut entries = position;
    loop {
        let live = checkpoint::read(pool, projection.name()).await?;
        if live - position <= SWAP_WITHIN {
            break;
        }
        entries += apply_range(pool, projection, &shadow, position, live, &|at| {
            progress(at, live)
        })
        .await?;
        position = live;
    }
    for table in projection.tables() {
        sqlx::query(&format!("ANALYZE {}.{table}", quote_ident(&shadow)))
            .execute(pool)
            .await?;
    }
    let mut attempt = 0;
    let (position, applied) = loop {
        attempt += 1;
        match swap(pool, projection, &shadow, &retired, position).await {
            Ok(done) => break done,
            Err(ApplyError::Sql(sqlx::Error::Database(err)))
                if err.code().as_deref() == Some(LOCK_NOT_AVAILABLE) && attempt < SWAP_ATTEMPTS =>
            {
                tracing::warn!(%projection, attempt, "reads held the live tables too long; swapping again");
            }
            Err(err) => return Err(err.into()),
        }
    };
    entries += applied;
    progress(position, position);
    // Reads still on the old tables finish on them: dropping them waits for
    // their locks, and every later read resolves the new ones.
    let mut conn = pool.acquire().await?;
    for schema in [&retired, &shadow] {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(schema)
        ))
        .execute(&mut *conn)
        .await?;
    }
    let report = ReplayReport {
        projection,
        entries,
        position,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        %projection,
        entries,
        position,
        elapsed_ms = report.elapsed.as_millis() as u64,
        rate = report.rate() as u64,
        "replayed"
    );
    Ok(report)
}

/// Records that `chosen` are to be replayed, in place of whatever an earlier
/// run left pending; each [`replay`] that swaps its tables in takes its own
/// off, so after an interruption [`pending`] names the ones left.
pub async fn plan(pool: &PgPool, chosen: &[Projection]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = chosen.iter().map(|projection| projection.name()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM pending_replays")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO pending_replays (projection) SELECT unnest($1::text[])")
        .bind(names)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The read models the last planned run has not swapped in yet.
pub async fn pending(pool: &PgPool) -> Result<Vec<Projection>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar("SELECT projection FROM pending_replays")
        .fetch_all(pool)
        .await?;
    Ok(Projection::ALL
        .into_iter()
        .filter(|projection| names.iter().any(|name| name == projection.name()))
        .collect())
}

/// The swap transaction. Returns the checkpoint it swapped at and how many
/// entries it applied to the shadow on the way.
async fn swap(
    pool: &PgPool,
    projection: Projection,
    shadow: &str,
    retired: &str,
    from: i64,
) -> Result<(i64, i64), ApplyError> {
    let (shadow, retired) = (quote_ident(shadow), quote_ident(retired));
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {retired}"))
        .execute(&mut *conn)
        .await?;
    let mut tx = locks::begin_without_events(&mut conn, Commit::Synced).await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    // The workers of this projection now wait for this transaction.
    let live = checkpoint::lock(&mut tx, projection.name()).await?;
    sqlx::query(&format!("SET LOCAL search_path = {shadow}, public"))
        .execute(&mut *tx)
        .await?;
    let applied = catch_up(&mut tx, projection, from, live).await?;
    lock_live_tables(&mut tx, projection).await?;
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {retired}.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE public.{table} SET SCHEMA {retired}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {shadow}.{table} SET SCHEMA public"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM pending_replays WHERE projection = $1")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((live, applied))
}

/// Takes all of the projection's live tables at once, without waiting, trying
/// again after a short pause while reads hold them. Waiting for one table
/// while holding another could deadlock with a read that holds the second and
/// waits for the first, and Postgres would end one of the two. When the tables
/// stay busy the swap's lock timeout error is returned, and the swap is tried
/// again later.
async fn lock_live_tables(
    tx: &mut PgConnection,
    projection: Projection,
) -> Result<(), sqlx::Error> {
    let tables = projection
        .tables()
        .iter()
        .map(|table| format!("public.{table}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut attempt = 0;
    loop {
        attempt += 1;
        sqlx::query("SAVEPOINT lock_live_tables")
            .execute(&mut *tx)
            .await?;
        match sqlx::query(&format!(
            "LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE NOWAIT"
        ))
        .execute(&mut *tx)
        .await
        {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(err))
                if err.code().as_deref() == Some(LOCK_NOT_AVAILABLE) && attempt < LOCK_ATTEMPTS =>
            {
                sqlx::query("ROLLBACK TO SAVEPOINT lock_live_tables")
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(LOCK_PAUSE).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Applies the entries after `from` up to `up_to` inside the swap transaction.
async fn catch_up(
    tx: &mut PgConnection,
    projection: Projection,
    from: i64,
    up_to: i64,
) -> Result<i64, ApplyError> {
    let mut position = from;
    let mut applied = 0;
    while position < up_to {
        let entries = herald_nats::log::read_after(&mut *tx, position, up_to - position).await?;
        let Some(last) = entries.last().map(|entry| entry.position) else {
            break;
        };
        projection.apply_all(&mut *tx, &entries).await?;
        applied += entries.len() as i64;
        position = last;
    }
    Ok(applied)
}
