//! Sessions: opaque refresh tokens, stored only as their SHA-256, rotated on
//! every use. Each sign-in starts a family of tokens; presenting a token that
//! was already rotated revokes its whole family, as the OAuth 2.0 Security
//! BCP advises, since only a thief or a leak can hold a spent token.

use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// How long a refresh token is valid if it is not used.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// 32 bytes from the operating system's generator: every token and secret
/// Herald makes is made of these.
pub fn secret_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A new opaque token and the hash it is stored as.
pub fn mint() -> (String, Vec<u8>) {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes());
    let hash = hashed(&token);
    (token, hash)
}

fn hashed(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Inserts a token of `family` for `user_id`; returns the token.
async fn issue<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    family: Uuid,
    user_id: Uuid,
) -> Result<String, sqlx::Error> {
    let (token, hash) = mint();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family, user_id, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(hash)
    .bind(family)
    .bind(user_id)
    .bind(REFRESH_TTL.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(token)
}

/// Starts a session for `user_id`: the first refresh token of a new family.
pub async fn start(pool: &PgPool, user_id: Uuid) -> Result<String, sqlx::Error> {
    issue(pool, Uuid::now_v7(), user_id).await
}

/// The state of a presented token, locked for the rotation.
#[derive(sqlx::FromRow)]
struct Presented {
    family: Uuid,
    user_id: Uuid,
    usable: bool,
    rotated: bool,
}

/// Rotates a presented refresh token: its successor and the user it signs
/// in, or `None` when it is unknown, expired, revoked or already rotated
/// (and then its family is revoked too).
pub async fn rotate(pool: &PgPool, presented: &str) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<Presented> = sqlx::query_as(
        "SELECT family, user_id,
                rotated_at IS NULL AND revoked_at IS NULL AND expires_at > now() AS usable,
                rotated_at IS NOT NULL AS rotated
           FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hashed(presented))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    if !found.usable {
        if found.rotated {
            tracing::warn!(user_id = %found.user_id, family = %found.family, "a spent refresh token was presented again; its session is revoked");
            revoke_family(&mut *tx, found.family).await?;
            tx.commit().await?;
        }
        return Ok(None);
    }
    sqlx::query("UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1")
        .bind(hashed(presented))
        .execute(&mut *tx)
        .await?;
    let next = issue(&mut *tx, found.family, found.user_id).await?;
    tx.commit().await?;
    Ok(Some((found.user_id, next)))
}

async fn revoke_family<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    family: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .execute(executor)
    .await?;
    Ok(())
}

/// Ends the session a presented refresh token belongs to, if any.
pub async fn end(pool: &PgPool, presented: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now()
          WHERE family = (SELECT family FROM refresh_tokens WHERE token_hash = $1)
            AND revoked_at IS NULL",
    )
    .bind(hashed(presented))
    .execute(pool)
    .await?;
    Ok(())
}

/// The user a password-setup token sets the password of, or `None` when it
/// is unknown, expired or spent.
pub async fn password_setup_of(pool: &PgPool, token: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT user_id FROM password_setups
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
    )
    .bind(hashed(token))
    .fetch_optional(pool)
    .await
}

/// Spends a password-setup token once its password is set, so that a set
/// that failed can be tried again with it.
pub async fn spend_password_setup(pool: &PgPool, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE password_setups SET used_at = now() WHERE token_hash = $1")
        .bind(hashed(token))
        .execute(pool)
        .await?;
    Ok(())
}
