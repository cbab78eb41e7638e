//! Accounts: the personal data of users, kept beside the log rather than in
//! it. Each change is written in the transaction that appends the event
//! recording *that* it changed (see [`crate::append`]), so the two never
//! disagree, and the data can be erased later without touching the log.

use std::time::Duration;

use chrono::Utc;
use domain::user::UserCommand;
use domain::values::Actor;
use domain::DomainError;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{CommandError, Metadata, WriteSide};

/// How long the token that sets an account's first password is valid.
pub const PASSWORD_SETUP_TTL: Duration = Duration::from_secs(48 * 3600);

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
        /// The SHA-256 of a one-time token that sets their first password,
        /// valid for [`PASSWORD_SETUP_TTL`], when an admin opens the account.
        password_setup: Option<Vec<u8>>,
    },
    /// New profile values; a field left `None` keeps its value.
    Profile {
        /// Whose.
        user_id: Uuid,
        /// A new name.
        name: Option<String>,
        /// A new phone, or `Some(None)` to remove it.
        phone: Option<Option<String>>,
        /// A doctor's new specialty, or `Some(None)` to remove it.
        specialty: Option<Option<String>>,
        /// A doctor's new introduction, or `Some(None)` to remove it.
        bio: Option<Option<String>>,
    },
    /// A new password; every session of the user ends with it.
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
            Self::Open { user_id, .. }
            | Self::Profile { user_id, .. }
            | Self::Password { user_id, .. } => *user_id,
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
                password_setup,
            } => {
                sqlx::query(
                    "WITH setup AS (
                         INSERT INTO password_setups (token_hash, user_id, expires_at)
                         SELECT $6, $1, now() + make_interval(secs => $7) WHERE $6 IS NOT NULL)
                     INSERT INTO accounts (user_id, email, password_hash, name, phone)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user_id)
                .bind(email)
                .bind(password_hash)
                .bind(name)
                .bind(phone)
                .bind(password_setup)
                .bind(PASSWORD_SETUP_TTL.as_secs_f64())
                .execute(conn)
                .await?;
            }
            Self::Profile {
                user_id,
                name,
                phone,
                specialty,
                bio,
            } => {
                sqlx::query(
                    "UPDATE accounts
                        SET name = coalesce($2, name),
                            phone = CASE WHEN $3 THEN $4 ELSE phone END,
                            specialty = CASE WHEN $5 THEN $6 ELSE specialty END,
                            bio = CASE WHEN $7 THEN $8 ELSE bio END
                      WHERE user_id = $1",
                )
                .bind(user_id)
                .bind(name)
                .bind(phone.is_some())
                .bind(phone.clone().flatten())
                .bind(specialty.is_some())
                .bind(specialty.clone().flatten())
                .bind(bio.is_some())
                .bind(bio.clone().flatten())
                .execute(conn)
                .await?;
            }
            Self::Password {
                user_id,
                password_hash,
            } => {
                sqlx::query(
                    "WITH ended AS (
                         UPDATE refresh_tokens SET revoked_at = now()
                          WHERE user_id = $1 AND revoked_at IS NULL)
                     UPDATE accounts SET password_hash = $2 WHERE user_id = $1",
                )
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
    /// A doctor's specialty, if given.
    pub specialty: Option<String>,
    /// A doctor's introduction, if given.
    pub bio: Option<String>,
    /// The argon2id hash of their password.
    pub password_hash: String,
}

const SELECT_ACCOUNT: &str =
    "SELECT user_id, email, name, phone, specialty, bio, password_hash FROM accounts";

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

/// Whether the account's owner may use Herald now: their access, which the
/// User events keep in `user_access`, is active.
const ACTIVE: &str =
    "EXISTS (SELECT 1 FROM user_access u WHERE u.user_id = accounts.user_id AND u.active)";

/// The account of `user_id` while its owner's access is active; none for a
/// deactivated user, whose account is kept for their return, or a service
/// account.
pub async fn of_active_user<'c>(
    executor: impl PgExecutor<'c>,
    user_id: Uuid,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_ACCOUNT} WHERE user_id = $1 AND {ACTIVE}"))
        .bind(user_id)
        .fetch_optional(executor)
        .await
}

/// Those of `user_ids` who have an account and whose access is active.
pub async fn active_among<'c>(
    executor: impl PgExecutor<'c>,
    user_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT user_id FROM accounts WHERE user_id = ANY($1) AND {ACTIVE}"
    ))
    .bind(user_ids)
    .fetch_all(executor)
    .await
}

/// A user as admins list them: their account and their access.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ListedUser {
    /// The user's id.
    pub id: Uuid,
    /// The address they sign in with.
    pub email: String,
    /// Their name.
    pub name: String,
    /// Their phone, if given.
    pub phone: Option<String>,
    /// The role they act in.
    pub role: String,
    /// Whether they may sign in.
    pub active: bool,
    /// When their account was opened.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Which users to list.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Only this role's.
    pub role: Option<String>,
    /// Only those whose address or name holds this, whatever its case.
    pub search: Option<String>,
}

/// Up to `limit` users matching `filter`, by id, after `after`.
pub async fn list<'c>(
    executor: impl PgExecutor<'c>,
    filter: &UserFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ListedUser>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.user_id AS id, a.email, a.name, a.phone, u.role, u.active, a.created_at
           FROM accounts a JOIN user_access u USING (user_id)
          WHERE ($1::text IS NULL OR u.role = $1)
            AND ($2::text IS NULL OR strpos(lower(a.email), lower($2)) > 0
                                  OR strpos(lower(a.name), lower($2)) > 0)
            AND ($3::uuid IS NULL OR a.user_id > $3)
          ORDER BY a.user_id
          LIMIT $4",
    )
    .bind(&filter.role)
    .bind(&filter.search)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

impl WriteSide {
    /// Herald itself opens an account for `actor` in their role, signing in
    /// with `password_hash`, unless the user or the address already has one:
    /// development mode's demo users, and the people tests need.
    pub async fn enroll(
        &self,
        actor: Actor,
        email: String,
        name: String,
        password_hash: String,
    ) -> Result<(), CommandError> {
        let account = AccountWrite::Open {
            user_id: actor.user_id,
            email,
            password_hash,
            name,
            phone: None,
            password_setup: None,
        };
        let command = UserCommand::Create {
            user_id: actor.user_id,
            role: actor.role,
            actor: Actor::system(),
            at: Utc::now(),
        };
        let metadata = Metadata::for_request(Actor::system(), Uuid::now_v7().to_string());
        match self.execute_on_account(command, &metadata, account).await {
            Ok(_)
            | Err(CommandError::Rejected(
                DomainError::UserAlreadyExists | DomainError::EmailTaken,
            )) => Ok(()),
            Err(err) => Err(err),
        }
    }
}
