//! The Postgres pool: created database, short timeouts, migrated schema.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseArgs;

/// How long a request waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates the database when it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    if Postgres::database_exists(url).await? {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        Ok(()) => Ok(()),
        // Another process created it first: Postgres says so as 42P04
        // (duplicate_database) or, when both got past its own check at once,
        // as a clash on its catalog's unique index (23505).
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// A pool on the configured database, created if missing. Connections are made
/// lazily, so a Postgres that goes away and comes back is used again without a
/// restart.
pub async fn connect(args: &DatabaseArgs) -> Result<PgPool, sqlx::Error> {
    ensure_database(&args.database_url).await?;
    let options = PgConnectOptions::from_str(&args.database_url)?.application_name("herald");
    let pool = PgPoolOptions::new()
        .max_connections(args.database_pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options);
    Ok(pool)
}

/// The schema of the whole database: the event store and the write side's
/// tables, the sequenced log, checkpoints and every read model.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// A pool on the configured database, created if missing and migrated.
pub async fn migrated_pool(
    args: &DatabaseArgs,
) -> Result<PgPool, Box<dyn std::error::Error + Send + Sync>> {
    let pool = connect(args).await?;
    migrate(&pool).await?;
    Ok(pool)
}
