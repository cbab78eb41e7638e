//! Development mode's identity: the JWT and webhook secrets `herald up --dev`
//! makes up for itself and its demo users, one of each role, kept in the
//! database so that tokens printed once still work after a restart, and so
//! that `herald token` can mint more against a `--dev` database.

use std::time::Duration;

use domain::values::{Actor, Role};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::JwtKeys;

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
}

/// The secrets, then the patient, doctor, admin and auditor.
type Row = (String, String, Uuid, Uuid, Uuid, Uuid);

/// The kept identity, as [`Row`].
const SELECT: &str = "SELECT jwt_secret, webhook_secret,
                             patient_id, doctor_id, admin_id, auditor_id
                        FROM dev_identity";

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
        .bind(hex::encode(rand::random::<[u8; 32]>()))
        .bind(hex::encode(rand::random::<[u8; 32]>()))
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .execute(pool)
        .await?;
        let row: Row = sqlx::query_as(SELECT).fetch_one(pool).await?;
        Ok(Self::from(row))
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
            "development mode: the demo users' tokens, valid 24h, signed with {signed_with}:"
        );
        for actor in self.users {
            let token = keys.mint(actor, DEMO_TOKEN_TTL);
            text.push_str(&format!(
                "\n  {:<8} sub={} token={token}",
                actor.role.as_str(),
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
    fn from((jwt_secret, webhook_secret, patient, doctor, admin, auditor): Row) -> Self {
        Self {
            jwt_secret: SecretString::from(jwt_secret),
            webhook_secret: SecretString::from(webhook_secret),
            users: [
                Actor::new(patient, Role::Patient),
                Actor::new(doctor, Role::Doctor),
                Actor::new(admin, Role::Admin),
                Actor::new(auditor, Role::Auditor),
            ],
        }
    }
}
