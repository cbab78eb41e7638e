//! Rebuilding a read model from the Postgres log, beside the live one.
//!
//! The projection's tables are recreated empty in another schema, with the
//! migrated ones' columns, defaults and checks, and filled from the whole log
//! by the projection's [`Fold`]: the rows are worked out in memory and
//! written in bulk with binary `COPY`, instead of applying each entry with
//! the SQL the live worker runs. The keys and indexes are built after, with
//! the names the migrations give them, so the copies can later take the live
//! tables' place without anything telling them apart. Entries that arrive
//! after that are applied with the projection's own live code: the schema
//! comes first on the connection's `search_path`, so the same unqualified SQL
//! writes the shadow tables.
//!
//! The shadow tables are unlogged while they are folded into, and their
//! transactions do not wait for their commits to reach the disk (a shadow
//! lost in a crash is simply rebuilt); a replay makes them durable in bulk
//! before they go live.

use std::future::Future;

use futures::{StreamExt, TryStreamExt};
use herald_nats::locks::{self, Commit};
use herald_nats::log::copy::Rows;
use herald_nats::log::{Stored, StoredBatch};
use herald_nats::{log, LogEntry};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    activity, bookings, chats, notifications, payments, stored_aggregate_uuid, summary, ApplyError,
    Projection,
};

/// Entries read and applied per transaction after a fold.
const APPLY_BATCH: i64 = 5000;
/// Log positions read at once by a fold.
const FOLD_STRETCH: i64 = 5_000;
/// Stretches of the log read at once for a fold.
const FOLD_READERS: usize = 2;

/// A read model worked out from the whole log in memory and written in bulk:
/// the same rows the projection's live code writes entry by entry, which the
/// tests comparing a live read model with a rebuild check.
pub(crate) trait Fold: Default + Send + 'static {
    /// The `COPY … FROM STDIN (FORMAT binary)` that the rows written while
    /// folding go to, for a read model too large to hold until the end.
    const STREAMED: Option<&'static str> = None;

    /// Folds in one of the projection's entries, in log order, given with its
    /// aggregate's id, writing rows for [`Fold::STREAMED`] to `streamed`.
    fn entry(
        &mut self,
        entry: &Stored<'_>,
        aggregate_id: Uuid,
        streamed: &mut Rows,
    ) -> Result<(), ApplyError>;

    /// Writes the rest of the read model, after the streamed rows.
    fn finish(self, conn: &mut PgConnection)
        -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// Rebuilds `projection` into `schema` from the log up to and including
/// position `up_to`, returning how many log positions it covered.
pub async fn rebuild_into(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
    up_to: i64,
) -> Result<i64, ApplyError> {
    create_shadow(pool, projection, schema).await?;
    fold_into(pool, projection, schema, up_to, &|_| {}).await?;
    index_shadow(pool, projection, schema).await?;
    Ok(up_to)
}

/// Makes `schema` hold empty copies of the projection's tables, without
/// their keys and indexes ([`index_shadow`] adds them once they are filled).
pub(crate) async fn create_shadow(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(schema);
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
        .execute(&mut *tx)
        .await?;
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {quoted}.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {quoted}.{table}
                (LIKE public.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Gives the filled shadow tables the live tables' keys and indexes, with
/// the same names: building an index over rows already there is much cheaper
/// than keeping it while they are copied in.
pub(crate) async fn index_shadow(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(schema);
    let mut conn = pool.acquire().await?;
    for table in projection.tables() {
        // A key or unique constraint is added as a constraint, so it keeps
        // its name for both; any other index from its definition, whatever
        // follows `USING` (method, columns, predicate).
        let indexes: Vec<(String, Option<String>, bool, String)> = sqlx::query_as(
            "SELECT c.relname, pg_get_constraintdef(k.oid), i.indisunique,
                    split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2)
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.contype IN ('p', 'u')
              WHERE i.indrelid = ('public.' || quote_ident($1))::regclass
              ORDER BY c.relname",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for (name, constraint, unique, shape) in indexes {
            let name = quote_ident(&name);
            let statement = match constraint {
                Some(constraint) => {
                    format!("ALTER TABLE {quoted}.{table} ADD CONSTRAINT {name} {constraint}")
                }
                None => {
                    let unique = if unique { "UNIQUE " } else { "" };
                    format!("CREATE {unique}INDEX {name} ON {quoted}.{table} USING {shape}")
                }
            };
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Makes the shadow tables crash-safe before they go live: they are built
/// unlogged, since a shadow lost in a crash is simply rebuilt and skipping the
/// write-ahead log per row is much of a rebuild's speed; switching them to
/// logged writes each table to the log once, in bulk.
pub(crate) async fn make_durable(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(schema);
    for table in projection.tables() {
        sqlx::query(&format!("ALTER TABLE {quoted}.{table} SET LOGGED"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Fills the empty shadow tables of `projection` in `schema` from the log up
/// to `up_to` with its [`Fold`]; `progress` is told each position reached.
pub(crate) async fn fold_into(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
    up_to: i64,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(), ApplyError> {
    match projection {
        Projection::Chats => fold::<chats::Fold>(pool, projection, schema, up_to, progress).await,
        Projection::Bookings => {
            fold::<bookings::Fold>(pool, projection, schema, up_to, progress).await
        }
        Projection::Payments => {
            fold::<payments::Fold>(pool, projection, schema, up_to, progress).await
        }
        Projection::Summary => {
            fold::<summary::Fold>(pool, projection, schema, up_to, progress).await
        }
        Projection::Notifications => {
            fold::<notifications::Fold>(pool, projection, schema, up_to, progress).await
        }
        Projection::Activity => {
            fold::<activity::Fold>(pool, projection, schema, up_to, progress).await
        }
    }
}

/// Runs a [`Fold`]: the log is read ahead in stretches on its own
/// connection, each stretch is folded on a blocking thread, and the rows it
/// streams are sent into one `COPY` in the writing transaction while the
/// next stretch is read and folded.
async fn fold<F: Fold>(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
    up_to: i64,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(), ApplyError> {
    let (batches, mut received) = mpsc::channel::<StoredBatch>(2);
    let read = read_stored_ahead(pool, projection, up_to, batches);
    let write = async {
        let mut conn = pool.acquire().await?;
        let mut tx = begin_shadow(&mut conn, schema).await?;
        let fold = {
            let mut copy = match F::STREAMED {
                Some(statement) => Some(tx.copy_in_raw(statement).await?),
                None => None,
            };
            let mut fold = F::default();
            let mut rows = Rows::new();
            while let Some(batch) = received.recv().await {
                let folded = tokio::task::spawn_blocking(move || {
                    let result = fold_batch(&mut fold, &batch, &mut rows);
                    (fold, rows, result, batch.up_to)
                })
                .await;
                let (result, reached);
                (fold, rows, result, reached) = folded.map_err(log::joined)?;
                result?;
                if let Some(copy) = &mut copy {
                    copy.send(rows.take()).await?;
                }
                progress(reached);
            }
            if let Some(mut copy) = copy {
                copy.send(rows.finish()).await?;
                copy.finish().await?;
            }
            fold
        };
        fold.finish(&mut tx).await?;
        tx.commit().await?;
        Ok::<(), ApplyError>(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Folds in every entry of a stretch, in order.
fn fold_batch<F: Fold>(
    fold: &mut F,
    batch: &StoredBatch,
    rows: &mut Rows,
) -> Result<(), ApplyError> {
    for entry in batch.entries()? {
        let entry = entry?;
        fold.entry(&entry, stored_aggregate_uuid(&entry)?, rows)?;
    }
    Ok(())
}

/// Reads the projection's entries of the log up to `up_to` in stretches of
/// [`FOLD_STRETCH`] positions, [`FOLD_READERS`] at once on connections of
/// their own, ahead of the fold, which gets them in order.
async fn read_stored_ahead(
    pool: &PgPool,
    projection: Projection,
    up_to: i64,
    batches: mpsc::Sender<StoredBatch>,
) -> Result<(), ApplyError> {
    let reads = futures::stream::iter((0..up_to).step_by(FOLD_STRETCH as usize))
        .map(|after| async move {
            let mut tx = pool.begin().await?;
            // The stretches are already read side by side; parallel workers
            // started for each would cost Postgres more than they share.
            sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
                .execute(&mut *tx)
                .await?;
            let batch = log::read_stored(
                &mut tx,
                projection.aggregate_types(),
                after,
                (after + FOLD_STRETCH).min(up_to),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(batch)
        })
        .buffered(FOLD_READERS);
    futures::pin_mut!(reads);
    while let Some(batch) = reads.try_next().await? {
        if batches.send(batch).await.is_err() {
            // The fold stopped; its error is the one to report.
            break;
        }
    }
    Ok(())
}

/// Applies the log's entries after `from` up to and including `up_to` to the
/// tables in `schema` with the projection's live code; `progress` is told
/// each position reached. Only the entries of the aggregate types the
/// projection follows are read, on their own connection, one batch ahead.
/// Returns how many log positions were covered.
pub(crate) async fn apply_range(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
    from: i64,
    up_to: i64,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<i64, ApplyError> {
    if up_to <= from {
        return Ok(0);
    }
    let (batches, mut received) = mpsc::channel::<Vec<LogEntry>>(2);
    let read = async {
        let mut conn = pool.acquire().await?;
        let mut position = from;
        while position < up_to {
            let entries = log::read_of_types(
                &mut *conn,
                projection.aggregate_types(),
                position,
                up_to,
                APPLY_BATCH,
            )
            .await?;
            let Some(last) = entries.last().map(|entry| entry.position) else {
                break;
            };
            position = last;
            if batches.send(entries).await.is_err() {
                // The applier stopped; its error is the one to report.
                break;
            }
        }
        Ok::<(), ApplyError>(())
    };
    let apply = async {
        let mut conn = pool.acquire().await?;
        while let Some(entries) = received.recv().await {
            let mut tx = begin_shadow(&mut conn, schema).await?;
            projection.apply_all(&mut tx, &entries).await?;
            tx.commit().await?;
            if let Some(last) = entries.last() {
                progress(last.position);
            }
        }
        Ok(())
    };
    tokio::try_join!(read, apply)?;
    Ok(up_to - from)
}

/// Opens a shadow-writing transaction: unqualified names resolve to `schema`.
async fn begin_shadow<'c>(
    conn: &'c mut PgConnection,
    schema: &str,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, sqlx::Error> {
    // A shadow lost to a crash is rebuilt, so its commits need not wait for
    // disk; long batches of shadow writes must not hold the relay back.
    let mut tx = locks::begin_without_events(conn, Commit::Unsynced).await?;
    sqlx::query(&format!(
        "SET LOCAL search_path = {}, public",
        quote_ident(schema)
    ))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// A name made safe to splice into SQL as an identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
