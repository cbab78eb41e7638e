//! The Postgres pool: a checked URL, short timeouts, a migrated schema; only
//! `herald up` and `herald migrate` create the database. Reads run on
//! connections of their own ([`Readers`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseArgs;

/// How long a request waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection idle for longer is pinged before it is used again, so one
/// that Postgres dropped meanwhile (a restart, say) is replaced rather than
/// failing a request. A connection in steady use was just checked: the pool
/// pings each one as it is returned.
const RECHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Why no pool on the configured database could be had. The URL is never
/// printed (it may hold a password); the database's name is.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL is not one of a Postgres database.
    #[error(
        "HERALD_DATABASE_URL is not a Postgres URL such as \
         postgres://user@127.0.0.1:5432/herald: {0}"
    )]
    BadUrl(String),
    /// Only `herald up` and `herald migrate` create a database.
    #[error(
        "the database {0:?} named by HERALD_DATABASE_URL does not exist; \
         `herald migrate` or `herald up` creates it"
    )]
    Missing(String),
    /// The database exists but is not Herald's.
    #[error(
        "the database {0:?} named by HERALD_DATABASE_URL holds no Herald schema; \
         `herald migrate` creates it"
    )]
    NotHeralds(String),
    /// Postgres could not be reached at all.
    #[error("cannot reach Postgres at {at} (HERALD_DATABASE_URL): {source}")]
    Unreachable {
        /// The host and port tried.
        at: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Postgres refused or failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The name of the database `url` names, once the URL is checked to be a
/// Postgres URL with a host and one plain database name.
fn database_name(url: &str) -> Result<String, DatabaseError> {
    let parsed = url::Url::parse(url).map_err(|err| DatabaseError::BadUrl(err.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(DatabaseError::BadUrl(format!(
            "the scheme is {:?}, not postgres",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(DatabaseError::BadUrl("it names no host".to_owned()));
    }
    let name = parsed.path().trim_start_matches('/');
    if name.is_empty() || name.contains('/') {
        return Err(DatabaseError::BadUrl(
            "its path must be one database name".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

/// `err`, named as the unreachable server it is when it is one.
fn reaching(url: &str, err: sqlx::Error) -> DatabaseError {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            let at = url::Url::parse(url).map_or_else(
                |_| "the configured server".to_owned(),
                |url| {
                    format!(
                        "{}:{}",
                        url.host_str().unwrap_or("?"),
                        url.port().unwrap_or(5432)
                    )
                },
            );
            DatabaseError::Unreachable { at, source: err }
        }
        err => DatabaseError::Sql(err),
    }
}

/// Creates the database when it does not exist yet; whether it did.
async fn ensure_database(url: &str) -> Result<bool, sqlx::Error> {
    if Postgres::database_exists(url).await? {
        return Ok(false);
    }
    match Postgres::create_database(url).await {
        Ok(()) => Ok(true),
        // Another process created it first: Postgres says so as 42P04
        // (duplicate_database) or, when both got past its own check at once,
        // as a clash on its catalog's unique index (23505).
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// A pool on `url`. Connections are made lazily, so a Postgres that goes away
/// and comes back is used again without a restart.
fn pool(args: &DatabaseArgs) -> Result<PgPool, DatabaseError> {
    let options = PgConnectOptions::from_str(&args.database_url)?.application_name("herald");
    Ok(PgPoolOptions::new()
        .max_connections(args.database_pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > RECHECK_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// The schema of the whole database: the event store and the write side's
/// tables, the sequenced log, checkpoints and every read model.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool on the configured database, created if missing (said in one log
/// line) and migrated: for `herald up` and `herald migrate`.
pub async fn migrated_pool(args: &DatabaseArgs) -> Result<PgPool, DatabaseError> {
    let name = database_name(&args.database_url)?;
    let created = ensure_database(&args.database_url)
        .await
        .map_err(|err| reaching(&args.database_url, err))?;
    if created {
        tracing::info!(database = name, "created the database");
    }
    let pool = pool(args)?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// A pool on the configured database, which must exist and hold Herald's
/// schema (brought up to date): for every subcommand that reads or serves an
/// existing log, so a mistyped URL is refused instead of read as an empty log.
pub async fn existing_pool(args: &DatabaseArgs) -> Result<PgPool, DatabaseError> {
    let name = database_name(&args.database_url)?;
    let exists = Postgres::database_exists(&args.database_url)
        .await
        .map_err(|err| reaching(&args.database_url, err))?;
    if !exists {
        return Err(DatabaseError::Missing(name));
    }
    let pool = pool(args)?;
    let heralds: bool = sqlx::query_scalar("SELECT to_regclass('public.events') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    if !heralds {
        return Err(DatabaseError::NotHeralds(name));
    }
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Connections the read routes keep for themselves. sqlx's pool pings every
/// connection as it comes back, one more round trip per read than the read
/// itself; these go back without one. That is safe because every query sqlx
/// sends first reads to the end of whatever an interrupted one left; a
/// connection whose query failed is closed rather than kept, and one idle for
/// longer than [`RECHECK_AFTER_IDLE`] is pinged before it is used, as the
/// pool's are.
pub struct Readers {
    options: PgConnectOptions,
    idle: std::sync::Mutex<Vec<(sqlx::PgConnection, std::time::Instant)>>,
    slots: tokio::sync::Semaphore,
}

impl Readers {
    /// Up to `size` connections to where `pool` connects, opened as reads
    /// need them.
    pub fn new(pool: &PgPool, size: usize) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            idle: std::sync::Mutex::default(),
            slots: tokio::sync::Semaphore::new(size.max(1)),
        }
    }

    /// Runs `read` on a connection of its own, waiting for one as long as a
    /// request waits for the pool's.
    pub async fn run<T>(
        &self,
        read: impl for<'c> FnOnce(
            &'c mut sqlx::PgConnection,
        ) -> futures::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let _slot = tokio::time::timeout(ACQUIRE_TIMEOUT, self.slots.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let mut conn = self.connection().await?;
        let result = read(&mut conn).await;
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }

    async fn connection(&self) -> Result<sqlx::PgConnection, sqlx::Error> {
        loop {
            let kept = self.idle.lock().map_or(None, |mut idle| idle.pop());
            let Some((mut conn, since)) = kept else {
                return sqlx::ConnectOptions::connect(&self.options).await;
            };
            if since.elapsed() <= RECHECK_AFTER_IDLE
                || sqlx::Connection::ping(&mut conn).await.is_ok()
            {
                return Ok(conn);
            }
        }
    }

    fn give_back(&self, conn: sqlx::PgConnection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((conn, std::time::Instant::now()));
        }
    }
}
