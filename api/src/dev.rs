//! Development mode's identity: the JWT and webhook secrets `herald up --dev`
//! makes up for itself and its demo users, one of each role with an account
//! to sign in with, kept in the database so that tokens and passwords printed
//! once still work after a restart, and so that `herald token` can mint more
//! against a `--dev` database.

use std::time::Duration;

use commands::accounts;
use commands::WriteSide;
use domain::values::{Actor, Password, Role};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::JwtKeys;
use crate::error::ApiError;
use crate::passwords;

/// How long the printed demo tokens are valid.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What `herald up --dev` keeps across restarts.
#[derive(Debug)]
pub struct DevIdentity {
    /// Signs tokens when `HERALD_JWT_SECRET` is not set.
    pub jwt_secret: SecretString,
    /// Signs the sandbox's notifications when `HERALD_WEBHOOK_SECRET` is not set.
    pub webhook_secret: SecretString,
    /// One user of each role.
    pub users: [Actor; 4],
    /// What every demo user signs in with.
    pub password: String,
}

/// The secrets, the patient, doctor, admin and auditor, and their password.
type Row = (String, String, Uuid, Uuid, Uuid, Uuid, String);

/// The kept identity, as [`Row`] (a password is made up by the next
/// `herald up --dev` when the row predates demo accounts).
const SELECT: &str = "SELECT jwt_secret, webhook_secret,
                             patient_id, doctor_id, admin_id, auditor_id,
                             coalesce(password, '')
                        FROM dev_identity";

/// The address a demo user signs in with.
pub fn demo_email(role: Role) -> String {
    format!("{role}@herald.test")
}

impl DevIdentity {
    /// The database's identity, made on first use. Two Herald processes
    /// starting at once end up with the same one.
    pub async fn load_or_create(pool: &PgPool) -> Result<Self, sqlx::Error> {
        sqlx::query(
            "INSERT INTO dev_identity (jwt_secret, webhook_secret, patient_id, doctor_id,
                                       admin_id, auditor_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (only_row) DO NOTHING",
        )
        .bind(hex::encode(crate::sessions::secret_bytes()))
        .bind(hex::encode(crate::sessions::secret_bytes()))
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .execute(pool)
        .await?;
        // Kept since before demo users had accounts: a password now.
        sqlx::query("UPDATE dev_identity SET password = $1 WHERE password IS NULL")
            .bind(hex::encode(rand::random::<[u8; 8]>()))
            .execute(pool)
            .await?;
        let row: Row = sqlx::query_as(SELECT).fetch_one(pool).await?;
        Ok(Self::from(row))
    }

    /// Opens the demo users' accounts that do not exist yet, as Herald
    /// itself. Another process opening them at the same moment is fine.
    pub async fn open_accounts(&self, write: &WriteSide) -> Result<(), ApiError> {
        let password =
            Password::parse(self.password.clone()).map_err(|err| ApiError::Invalid(vec![err]))?;
        for actor in self.users {
            if accounts::of_user(write.pool(), actor.user_id)
                .await?
                .is_some()
            {
                continue;
            }
            let hash = passwords::hash(password.clone()).await?;
            let name = format!("Demo {}", actor.role);
            write
                .enroll(actor, demo_email(actor.role), name, hash)
                .await?;
        }
        Ok(())
    }

    /// The database's identity, if `herald up --dev` ever ran on it.
    pub async fn load(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let row: Option<Row> = sqlx::query_as(SELECT).fetch_optional(pool).await?;
        Ok(row.map(Self::from))
    }

    /// What `herald up --dev` prints: a token of each demo user, signed with
    /// `keys`, and how to mint more.
    pub fn greeting(&self, keys: &JwtKeys, signed_with: &str) -> String {
        let mut text = format!(
            "development mode: the demo users sign in with the password {}; their tokens, \
             valid 24h, signed with {signed_with}:",
            self.password
        );
        for actor in self.users {
            let token = keys.mint(actor, DEMO_TOKEN_TTL);
            text.push_str(&format!(
                "\n  {:<8} {:<20} sub={} token={token}",
                actor.role.as_str(),
                demo_email(actor.role),
                actor.user_id
            ));
        }
        text.push_str(
            "\nthe users and secrets are kept in the database and survive restarts; mint more \
             with `herald token --sub <uuid> --role <role>`",
        );
        text
    }
}

impl From<Row> for DevIdentity {
    fn from((jwt_secret, webhook_secret, patient, doctor, admin, auditor, password): Row) -> Self {
        Self {
            jwt_secret: SecretString::from(jwt_secret),
            webhook_secret: SecretString::from(webhook_secret),
            users: [
                Actor::new(patient, Role::Patient),
                Actor::new(doctor, Role::Doctor),
                Actor::new(admin, Role::Admin),
                Actor::new(auditor, Role::Auditor),
            ],
            password,
        }
    }
}
