use std::error::Error as StdError;

use cqrs_es::AggregateError;
use domain::DomainError;

/// A boxed infrastructure failure, kept for logs and never shown to clients.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a command did not produce a result.
///
/// A rejected command (the caller's fault, answered with a 4xx) is a different
/// thing from a store that failed (Herald's or its database's fault, a 5xx).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The aggregate's rules refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Other commands kept changing the aggregate, even after retrying.
    #[error("the resource was changed by another request; try again")]
    Conflict,
    /// The idempotency key was first used with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// Postgres could not be reached; the command stored nothing.
    #[error("the event store is unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else that went wrong inside Herald.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl CommandError {
    /// Sorts a store failure into "Postgres is unreachable" and "something else broke".
    pub fn from_store(err: BoxError) -> Self {
        if is_unavailable(err.as_ref()) {
            Self::Unavailable(err)
        } else if let Some(rejected) = rule_of_constraint(err.as_ref()) {
            Self::Rejected(rejected)
        } else {
            Self::Internal(err)
        }
    }
}

impl From<sqlx::Error> for CommandError {
    fn from(err: sqlx::Error) -> Self {
        Self::from_store(Box::new(err))
    }
}

impl From<AggregateError<DomainError>> for CommandError {
    fn from(err: AggregateError<DomainError>) -> Self {
        match err {
            AggregateError::UserError(rejected) => Self::Rejected(rejected),
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::DatabaseConnectionError(err) => Self::Unavailable(err),
            AggregateError::DeserializationError(err) => Self::Internal(err),
            AggregateError::UnexpectedError(err) => Self::from_store(err),
        }
    }
}

/// The database error behind `err`: the first `sqlx::Error` among it and its
/// sources, however deep a store wrapped it.
pub fn database_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a sqlx::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<sqlx::Error>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// The domain rule a write-side constraint enforced at commit, when a store
/// error is one: the commit found what the facts looked up before it missed,
/// e.g. a payment started for the same booking by a concurrent request.
pub(crate) fn rule_of_constraint(err: &(dyn StdError + 'static)) -> Option<DomainError> {
    let Some(sqlx::Error::Database(db)) = database_error(err) else {
        return None;
    };
    match db.constraint() {
        Some("one_active_payment_per_booking") => Some(DomainError::PaymentInProgress),
        Some("one_message_per_id") => Some(DomainError::MessageAlreadyExists),
        Some("one_account_per_email") => Some(DomainError::EmailTaken),
        _ => None,
    }
}

/// Whether an error means "Postgres is down or refusing connections right now".
pub(crate) fn is_unavailable(err: &(dyn StdError + 'static)) -> bool {
    match database_error(err) {
        Some(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
        ) => true,
        // Class 08 is "connection exception"; 57P01-57P03 are the server
        // shutting down or not yet accepting connections.
        Some(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}
