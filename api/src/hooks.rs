//! Webhooks of notifications: URLs an admin registers per notification
//! kind, to which every notification of that kind is posted, signed like
//! the payment provider's notifications to Herald (`X-Herald-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`) with a secret
//! of the webhook's own, shown once when it is registered.

use chrono::{DateTime, Utc};
use domain::values::NotificationKind;
use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::provider::webhook::{WebhookSecret, WebhookSecretError};

/// A registered webhook as admins see it, with how its deliveries went.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Hook {
    /// Its id.
    pub id: Uuid,
    /// The kind of notification posted to it.
    #[schema(value_type = NotificationKind)]
    pub kind: String,
    /// Where they are posted.
    pub url: String,
    /// Who registered it.
    pub created_by: Uuid,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When a delivery was last tried.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status it answered; none when it did not answer.
    pub last_status: Option<i32>,
    /// What went wrong, when it did.
    pub last_error: Option<String>,
    /// Notifications delivered.
    pub delivered: i64,
    /// Notifications set aside after every attempt failed.
    pub failed: i64,
}

/// Columns of [`Hook`].
const HOOK: &str = "id, kind, url, created_by, created_at, last_attempt_at, last_status,
                    last_error, delivered, failed";

/// A new secret to sign a webhook's deliveries with.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Registers `url` for notifications of `kind`; returns the webhook and the
/// secret its deliveries will be signed with.
pub async fn register(
    pool: &PgPool,
    kind: NotificationKind,
    url: &url::Url,
    by: Uuid,
) -> Result<(Hook, String), sqlx::Error> {
    let secret = new_secret();
    let hook = sqlx::query_as(&format!(
        "INSERT INTO notification_webhooks (id, kind, url, secret, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING {HOOK}"
    ))
    .bind(Uuid::now_v7())
    .bind(kind.as_str())
    .bind(url.as_str())
    .bind(&secret)
    .bind(by)
    .fetch_one(pool)
    .await?;
    Ok((hook, secret))
}

/// Every registered webhook, oldest first.
pub async fn list<'c>(executor: impl PgExecutor<'c>) -> Result<Vec<Hook>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {HOOK} FROM notification_webhooks ORDER BY created_at, id"
    ))
    .fetch_all(executor)
    .await
}

/// Removes a webhook; whether there was one.
pub async fn remove<'c>(executor: impl PgExecutor<'c>, id: Uuid) -> Result<bool, sqlx::Error> {
    let removed = sqlx::query("DELETE FROM notification_webhooks WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(removed.rows_affected() > 0)
}

/// The `X-Herald-Signature` of `body` posted at `now` to a webhook with
/// `secret`.
pub fn signature(secret: &str, body: &[u8], now: i64) -> Result<String, WebhookSecretError> {
    let secret = WebhookSecret::new(SecretString::from(secret.to_owned()))?;
    Ok(secret.sign(now, body))
}

/// What a webhook is posted: the notification, to whom it is (none for an
/// audience), and what it says, never more.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// The notification's id; a receiver that sees it twice has seen a
    /// repeat.
    pub id: Uuid,
    /// What it tells of.
    pub kind: &'a str,
    /// Its place in the recipient's feed.
    pub seq: i64,
    /// Whose it is; none for everyone in the audience of new bookings.
    pub user_id: Option<Uuid>,
    /// The booking it is about.
    pub booking_id: Option<Uuid>,
    /// The payment it is about.
    pub payment_id: Option<Uuid>,
    /// The chat it is about.
    pub chat_id: Option<Uuid>,
    /// How many messages a chat notification gathers.
    pub messages: Option<i64>,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// Why a delivery did not arrive.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The receiver answered, but not with a 2xx.
    #[error("the webhook answered {0}")]
    Status(reqwest::StatusCode),
    /// No answer: refused, cut or too slow.
    #[error("the webhook did not answer: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The webhook's secret cannot sign.
    #[error(transparent)]
    Secret(#[from] WebhookSecretError),
}

impl PostError {
    /// The status the receiver answered, if it did.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status(status) => Some(status.as_u16()),
            Self::Unreachable(err) => err.status().map(|status| status.as_u16()),
            Self::Secret(_) => None,
        }
    }
}

/// Posts `payload` to `url`, signed with `secret`; the status of a 2xx
/// answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    payload: &Payload<'_>,
) -> Result<u16, PostError> {
    // A struct of strings, numbers and ids always serializes.
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let signature = signature(secret, &body, Utc::now().timestamp())?;
    let answer = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(crate::provider::webhook::SIGNATURE_HEADER, signature)
        .header("x-herald-notification", payload.id.to_string())
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(PostError::Status(status))
    }
}
