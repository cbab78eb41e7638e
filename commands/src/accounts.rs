//! Accounts: the personal data of users, kept beside the log rather than in
//! it. Each change is written in the transaction that appends the event
//! recording *that* it changed (see [`crate::append`]), so the two never
//! disagree, and the data can be erased later without touching the log.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A change to the `accounts` table, written with the event that records it.
#[derive(Clone)]
pub enum AccountWrite {
    /// A new account.
    Open {
        /// The user the account signs in as.
        user_id: Uuid,
        /// The address they sign in with.
        email: String,
        /// The argon2id hash of their password.
        password_hash: String,
        /// Their name.
        name: String,
        /// Their phone, if given.
        phone: Option<String>,
    },
    /// A new password.
    Password {
        /// Whose.
        user_id: Uuid,
        /// The argon2id hash of the new password.
        password_hash: String,
    },
}

impl AccountWrite {
    /// The user whose account this changes.
    pub fn user_id(&self) -> Uuid {
        match self {
            Self::Open { user_id, .. } | Self::Password { user_id, .. } => *user_id,
        }
    }

    /// Writes the change inside the appending transaction.
    pub(crate) async fn write(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        match self {
            Self::Open {
                user_id,
                email,
                password_hash,
                name,
                phone,
            } => {
                sqlx::query(
                    "INSERT INTO accounts (user_id, email, password_hash, name, phone)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user_id)
                .bind(email)
                .bind(password_hash)
                .bind(name)
                .bind(phone)
                .execute(conn)
                .await?;
            }
            Self::Password {
                user_id,
                password_hash,
            } => {
                sqlx::query("UPDATE accounts SET password_hash = $2 WHERE user_id = $1")
                    .bind(user_id)
                    .bind(password_hash)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }
}

/// A user's account as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    /// The user.
    pub user_id: Uuid,
    /// The address they sign in with, as they wrote it.
    pub email: String,
    /// Their name.
    pub name: String,
    /// Their phone, if given.
    pub phone: Option<String>,
    /// The argon2id hash of their password.
    pub password_hash: String,
}

const SELECT_ACCOUNT: &str = "SELECT user_id, email, name, phone, password_hash FROM accounts";

/// The account signing in with `email`, whatever its case.
pub async fn by_email<'c>(
    executor: impl PgExecutor<'c>,
    email: &str,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_ACCOUNT} WHERE lower(email) = lower($1)"))
        .bind(email.trim())
        .fetch_optional(executor)
        .await
}

/// The account of `user_id`, if the user has one (service accounts minted
/// by `herald token` have none).
pub async fn of_user<'c>(
    executor: impl PgExecutor<'c>,
    user_id: Uuid,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_ACCOUNT} WHERE user_id = $1"))
        .bind(user_id)
        .fetch_optional(executor)
        .await
}
