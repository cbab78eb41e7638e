//! Rebuilding a read model from the Postgres log, beside the live one.
//!
//! The projection's tables are recreated empty in another schema (same columns,
//! keys, indexes and index names as the migrated ones) and the log is applied
//! there with the projection's own code: the schema comes first on the
//! connection's `search_path`, so the same unqualified SQL writes the shadow
//! tables.
//!
//! Rebuilding is write-bound, so it is arranged for throughput: the log is read
//! ahead on its own connection while the previous batch is applied, the shadow
//! tables are unlogged and each batch is one transaction that does not wait
//! for its commit to reach the disk (a shadow lost in a crash is simply
//! rebuilt), and a projection whose every
//! event touches only its own aggregate's rows ([`Projection::Chats`]) is
//! applied by several connections at once, each owning a share of the
//! aggregates, so an aggregate's events still apply in log order.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::future::try_join_all;
use herald_nats::log::copy::Rows;
use herald_nats::log::StoredBatch;
use herald_nats::{log, LogEntry};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::{chats, ApplyError, Projection};

/// Entries read and applied per transaction while rebuilding.
const REBUILD_BATCH: i64 = 5000;
/// Log positions read at once by a rebuild that folds.
const FOLD_STRETCH: i64 = 20_000;
/// Most connections that apply a partitionable projection side by side.
const PARTITIONS: usize = 8;

/// How many connections apply a partitionable projection: at most half of the
/// pool, less the reader's, so the live workers and requests sharing the pool
/// still get connections while a rebuild runs.
fn partitions(pool: &PgPool) -> usize {
    (pool.options().get_max_connections() as usize / 2)
        .saturating_sub(1)
        .clamp(1, PARTITIONS)
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
    apply_range(pool, projection, schema, 0, up_to, &|_| {}).await
}

/// Makes `schema` hold empty copies of the projection's tables, with the
/// indexes named as the migrations name them, so the copies can later take
/// the live tables' place without anything telling them apart.
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
            "CREATE UNLOGGED TABLE {quoted}.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
        name_indexes_like_live(&mut tx, schema, table).await?;
    }
    tx.commit().await?;
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

/// `LIKE … INCLUDING ALL` names copied indexes after their columns; gives each
/// the name of the live index of the same definition.
async fn name_indexes_like_live(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<(), sqlx::Error> {
    // An index's definition without its name and table: `btree (a, b) WHERE …`.
    let renames: Vec<(String, String)> = sqlx::query_as(
        "WITH copy AS (
             SELECT c.relname AS name, i.indisunique AS is_unique,
                    split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2) AS shape,
                    row_number() OVER (PARTITION BY i.indisunique,
                                       split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2)
                                       ORDER BY c.relname) AS n
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass),
         live AS (
             SELECT c.relname AS name, i.indisunique AS is_unique,
                    split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2) AS shape,
                    row_number() OVER (PARTITION BY i.indisunique,
                                       split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2)
                                       ORDER BY c.relname) AS n
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = ('public.' || quote_ident($2))::regclass)
         SELECT copy.name, live.name
           FROM copy JOIN live USING (is_unique, shape, n)
          WHERE copy.name <> live.name",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let schema = quote_ident(schema);
    for (copy, live) in renames {
        sqlx::query(&format!(
            "ALTER INDEX {schema}.{} RENAME TO {}",
            quote_ident(&copy),
            quote_ident(&live)
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Applies the log's entries after `from` up to and including `up_to` to the
/// tables in `schema`; `progress` is told each position reached. Only the
/// entries of the aggregate types the projection follows are read. Returns how
/// many log positions were covered.
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
    if from == 0 && projection == Projection::Chats {
        fold_chats(pool, schema, up_to, progress).await?;
        return Ok(up_to - from);
    }
    let (batches, received) = mpsc::channel::<Vec<LogEntry>>(2);
    let read = read_ahead(pool, projection, from, up_to, batches);
    let apply = async {
        if projection == Projection::Chats {
            apply_partitioned(pool, projection, schema, received, progress).await
        } else {
            apply_in_order(pool, projection, schema, received, progress).await
        }
    };
    tokio::try_join!(read, apply)?;
    Ok(up_to - from)
}

/// Reads the projection's share of the log in batches on its own connection,
/// one batch ahead of the appliers.
async fn read_ahead(
    pool: &PgPool,
    projection: Projection,
    from: i64,
    up_to: i64,
    batches: mpsc::Sender<Vec<LogEntry>>,
) -> Result<(), ApplyError> {
    let mut conn = pool.acquire().await?;
    let mut position = from;
    while position < up_to {
        let entries = log::read_of_types(
            &mut *conn,
            projection.aggregate_types(),
            position,
            up_to,
            REBUILD_BATCH,
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
    Ok(())
}

/// Rebuilds the empty chat tables in `schema` from the log up to `up_to` with
/// [`chats::Fold`]: the log is read ahead in stretches on its own connection,
/// each stretch is folded on a blocking thread, and the messages it sent are
/// streamed into one `COPY` in the writing transaction while the next
/// stretch is read and folded.
async fn fold_chats(
    pool: &PgPool,
    schema: &str,
    up_to: i64,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(), ApplyError> {
    let (batches, mut received) = mpsc::channel::<StoredBatch>(2);
    let read = read_stored_ahead(pool, Projection::Chats, up_to, batches);
    let fold = async {
        let mut conn = pool.acquire().await?;
        let mut tx = begin_shadow(&mut conn, schema).await?;
        let mut copy = tx.copy_in_raw(chats::COPY_MESSAGES).await?;
        let mut fold = chats::Fold::default();
        let mut rows = Rows::new();
        while let Some(batch) = received.recv().await {
            let folded = tokio::task::spawn_blocking(move || {
                let result = fold.batch(&batch, &mut rows);
                (fold, rows, result, batch.up_to)
            })
            .await;
            let (folded, written, result, reached) =
                folded.map_err(|err| match err.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(_) => ApplyError::Sql(sqlx::Error::WorkerCrashed),
                })?;
            (fold, rows) = (folded, written);
            result?;
            copy.send(rows.take()).await?;
            progress(reached);
        }
        copy.send(rows.finish()).await?;
        copy.finish().await?;
        fold.finish(&mut tx).await?;
        tx.commit().await?;
        Ok::<(), ApplyError>(())
    };
    tokio::try_join!(read, fold)?;
    Ok(())
}

/// Reads the projection's entries of the log up to `up_to` in stretches of
/// [`FOLD_STRETCH`] positions on its own connection, one stretch ahead of the
/// fold.
async fn read_stored_ahead(
    pool: &PgPool,
    projection: Projection,
    up_to: i64,
    batches: mpsc::Sender<StoredBatch>,
) -> Result<(), ApplyError> {
    let mut conn = pool.acquire().await?;
    for after in (0..up_to).step_by(FOLD_STRETCH as usize) {
        let batch = log::read_stored(
            &mut conn,
            projection.aggregate_types(),
            after,
            (after + FOLD_STRETCH).min(up_to),
        )
        .await?;
        if batches.send(batch).await.is_err() {
            // The fold stopped; its error is the one to report.
            break;
        }
    }
    Ok(())
}

/// Opens a shadow-writing transaction: unqualified names resolve to `schema`.
async fn begin_shadow<'c>(
    conn: &'c mut PgConnection,
    schema: &str,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL search_path = {}, public",
        quote_ident(schema)
    ))
    .execute(&mut *tx)
    .await?;
    // A shadow lost to a crash is rebuilt, so its commits need not wait for disk.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    // Long batches of shadow writes must not hold the relay back.
    sqlx::query("SELECT declare_no_event_writes()")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn apply_in_order(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
    mut received: mpsc::Receiver<Vec<LogEntry>>,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(), ApplyError> {
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
}

/// Splits each batch by aggregate over [`partitions`] connections.
async fn apply_partitioned(
    pool: &PgPool,
    projection: Projection,
    schema: &str,
    mut received: mpsc::Receiver<Vec<LogEntry>>,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(), ApplyError> {
    let partitions = partitions(pool);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..partitions)
        .map(|_| mpsc::channel::<Vec<LogEntry>>(1))
        .unzip();
    let dispatch = async move {
        while let Some(entries) = received.recv().await {
            let last = entries.last().map(|entry| entry.position);
            let mut shares: Vec<Vec<LogEntry>> = vec![Vec::new(); partitions];
            for entry in entries {
                shares[partition_of(&entry.aggregate_id, partitions)].push(entry);
            }
            for (sender, share) in senders.iter().zip(shares) {
                if !share.is_empty() && sender.send(share).await.is_err() {
                    // A partition failed; its error is the one to report.
                    return Ok(());
                }
            }
            if let Some(last) = last {
                progress(last);
            }
        }
        Ok::<(), ApplyError>(())
    };
    let appliers = try_join_all(
        receivers
            .into_iter()
            .map(|received| apply_in_order(pool, projection, schema, received, &|_| {})),
    );
    tokio::try_join!(dispatch, appliers)?;
    Ok(())
}

fn partition_of(aggregate_id: &str, partitions: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    aggregate_id.hash(&mut hasher);
    (hasher.finish() % partitions as u64) as usize
}

/// A name made safe to splice into SQL as an identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
