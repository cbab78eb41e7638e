//! `POST /webhooks/payments`: the payment provider tells Herald what happened
//! to a charge or a refund.
//!
//! There is no JWT: the provider signs each notification with the shared
//! `HERALD_WEBHOOK_SECRET` (`X-Herald-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<raw body>">`). The timestamp bounds how long a captured
//! notification can be replayed. Providers deliver at least once and in any
//! order, so every notification is safe to repeat: it is an idempotent command
//! keyed by the notification itself.
//!
//! Answers tell the provider whether to retry: 2xx means done (including "this
//! changed nothing"); 404 means Herald does not know the payment *yet* (the
//! notification can overtake the commit of the payment it is about) and 409
//! means the payment is not ready for it yet (a refund confirmed before its
//! request was stored), both worth retrying; 401, 400 and 422 mean the
//! notification itself is wrong.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::Utc;
use commands::gateway::{Notification, NotificationEvent};
use commands::{request_hash, CommandError, IdempotencyKey, Metadata};
use domain::payment::{Payment, PaymentCommand};
use domain::values::Actor;
use domain::{DomainError, ValidationError};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::command::{read_body, Accepted, Answer, Fields};
use crate::error::ApiError;
use crate::{openapi, request_id, AppState};

/// The header carrying the provider's signature.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";
/// The path providers deliver to (no `/api/v1`: it is not part of the client API).
pub const PATH: &str = "/webhooks/payments";
/// How old a notification's timestamp may be.
const TOLERANCE_SECS: i64 = 5 * 60;
/// How far ahead of Herald's clock a provider's clock may run.
const CLOCK_SKEW_SECS: i64 = 30;
/// The shortest webhook secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The routes at the top level, beside `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

/// The secret notifications are signed with, shared with the provider.
#[derive(Clone)]
pub struct WebhookSecret(Arc<SecretString>);

/// Why no webhook secret could be settled on.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSecretError {
    /// None was configured and this is not development mode.
    #[error(
        "HERALD_WEBHOOK_SECRET is required (at least {MIN_SECRET_LEN} bytes); \
         use `herald up --dev` to run with one it makes up"
    )]
    Missing,
    /// The configured one is too short to resist guessing.
    #[error("the webhook secret must be at least {MIN_SECRET_LEN} bytes long")]
    TooShort,
}

/// Why a notification's signature was not accepted; each is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Herald-Signature` header.
    #[error("the X-Herald-Signature header is required")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("the X-Herald-Signature header must be t=<unix seconds>,v1=<hex HMAC-SHA256>")]
    Malformed,
    /// The timestamp is more than five minutes old.
    #[error("the notification's signature is older than five minutes")]
    Stale,
    /// The timestamp is ahead of Herald's clock by more than the allowed skew.
    #[error("the notification's signature is dated in the future")]
    FromTheFuture,
    /// No `v1` matches the body.
    #[error("the notification's signature does not match its body")]
    Mismatch,
}

impl WebhookSecret {
    /// The configured secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: SecretString) -> Result<Self, WebhookSecretError> {
        if secret.expose_secret().len() < MIN_SECRET_LEN {
            return Err(WebhookSecretError::TooShort);
        }
        Ok(Self(Arc::new(secret)))
    }

    fn mac(&self, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.0.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `X-Herald-Signature` value for `body` sent at `timestamp`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(timestamp, body).finalize().into_bytes();
        format!("t={timestamp},v1={}", hex::encode(tag))
    }

    /// Checks a signature header against the raw body at time `now`. Tags are
    /// compared in constant time, so timing tells an attacker nothing.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut timestamp = None;
        let mut tags = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| SignatureError::Malformed)?,
                    );
                }
                Some(("v1", value)) => {
                    tags.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?);
                }
                // Other schemes may be added by the provider later.
                Some(_) => {}
                None => return Err(SignatureError::Malformed),
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if tags.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if now.saturating_sub(timestamp) > TOLERANCE_SECS {
            return Err(SignatureError::Stale);
        }
        if timestamp.saturating_sub(now) > CLOCK_SKEW_SECS {
            return Err(SignatureError::FromTheFuture);
        }
        let mac = self.mac(timestamp, body);
        if tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

impl From<SignatureError> for ApiError {
    fn from(err: SignatureError) -> Self {
        ApiError::Unauthorized(match err {
            SignatureError::Missing => "the X-Herald-Signature header is required",
            SignatureError::Malformed => {
                "the X-Herald-Signature header must be t=<unix seconds>,v1=<hex HMAC-SHA256>"
            }
            SignatureError::Stale => "the notification's signature is older than five minutes",
            SignatureError::FromTheFuture => "the notification's signature is dated in the future",
            SignatureError::Mismatch => "the notification's signature does not match its body",
        })
    }
}

/// A notification turned into the command it asks for.
struct Parsed {
    payment_id: Uuid,
    event: NotificationEvent,
    command: PaymentCommand,
}

/// Reads what a verified notification asks for; every invalid field is named.
fn parse(notification: Notification) -> Result<Parsed, ApiError> {
    let mut fields = Fields::default();
    if notification.kind != "notification" {
        fields.check::<()>(Err(ValidationError::new("type", "must be notification")));
    }
    let event = fields.check(NotificationEvent::parse(&notification.event));
    let object = notification.object;
    let payment_id = fields.check(
        Uuid::parse_str(&object.metadata.payment_id)
            .map_err(|_| ValidationError::new("object.metadata.payment_id", "must be a UUID")),
    );
    let amount = fields.check(object.amount.to_money());
    // A refund names the charge it returns; Herald checks it is the payment's.
    let refunded_charge = match event {
        Some(NotificationEvent::RefundSucceeded) => {
            fields.check(object.payment_id.ok_or_else(|| {
                ValidationError::new("object.payment_id", "is required for refunds")
            }))
        }
        _ => Some(String::new()),
    };
    let at = Utc::now();
    let reference = object.id;
    fields.finish(event.zip(payment_id).zip(amount).zip(refunded_charge).map(
        |(((event, payment_id), amount), refunded_charge)| {
            let command = match event {
                NotificationEvent::PaymentSucceeded => PaymentCommand::MarkSucceeded {
                    provider_payment_id: reference,
                    amount,
                    at,
                },
                NotificationEvent::PaymentCanceled => PaymentCommand::MarkFailed {
                    provider_payment_id: reference,
                    at,
                },
                NotificationEvent::RefundSucceeded => PaymentCommand::MarkRefunded {
                    provider_refund_id: reference,
                    provider_payment_id: refunded_charge,
                    amount,
                    at,
                },
            };
            Parsed {
                payment_id,
                event,
                command,
            }
        },
    ))
}

/// The provider's identity of a notification: the same for every delivery of
/// it, whatever else (such as the signature's timestamp) changes.
fn notification_id(event: NotificationEvent, object_id: &str) -> String {
    format!("{event}:{object_id}")
}

/// The answer to an applied (or repeated) provider notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationApplied {
    /// The Herald payment, its version after the notification and the
    /// consistency token that shows the change.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The notification's event.
    #[schema(example = "payment.succeeded")]
    pub event: String,
}

/// The payment provider reports what happened to a charge or a refund.
#[utoipa::path(
    post,
    path = PATH,
    tag = "provider",
    operation_id = "payment_notification",
    params(
        ("X-Herald-Signature" = String, Header,
         description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">` made with HERALD_WEBHOOK_SECRET; at most 5 minutes old"),
    ),
    request_body = Notification,
    responses(
        (status = 200, description = "Applied, or a repeat or late notification that changes nothing (then with `Idempotent-Replayed: true`)", body = NotificationApplied),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn receive(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer<NotificationApplied>, ApiError> {
    let bytes = read_body(&headers, body).await?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    if let Err(err) = app
        .webhook_secret
        .verify(signature, &bytes, Utc::now().timestamp())
    {
        tracing::warn!(%err, "payment notification refused");
        return Err(err.into());
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
    let notification: Notification = serde_path_to_error::deserialize(deserializer)
        .map_err(|err| ApiError::BadRequest(format!("the notification is not valid: {err}")))?;
    let object_id = notification.object.id.clone();
    let amount = notification.object.amount.clone();
    let Parsed {
        payment_id,
        event,
        command,
    } = parse(notification)?;
    let notification_id = notification_id(event, &object_id);
    let fingerprint = format!(
        "{notification_id}\n{payment_id}\n{} {}",
        amount.value, amount.currency
    );
    let metadata = Metadata {
        actor: Actor::system(),
        correlation_id: request_id::current().unwrap_or_else(|| Uuid::now_v7().to_string()),
        causation_id: notification_id.clone(),
        idempotency: Some(IdempotencyKey {
            key: format!("webhook/{notification_id}"),
            request_hash: request_hash("POST", PATH, fingerprint.as_bytes()),
        }),
    };
    let committed = match app
        .write
        .execute::<Payment>(payment_id, command, &metadata)
        .await
    {
        Ok(committed) => committed,
        Err(CommandError::Rejected(
            refused @ (DomainError::AmountMismatch { .. } | DomainError::UnknownProviderCharge),
        )) => {
            tracing::warn!(%payment_id, notification = notification_id, reason = %refused,
                details = ?refused, "payment notification refused");
            return Err(CommandError::Rejected(refused).into());
        }
        Err(err) => {
            tracing::info!(%payment_id, notification = notification_id, %err,
                "payment notification not applied; the provider will retry");
            return Err(err.into());
        }
    };
    Ok(Answer::ok(
        &committed,
        NotificationApplied {
            accepted: Accepted::of(&committed),
            event: event.as_str().to_owned(),
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::new(SecretString::from("s".repeat(32))).unwrap()
    }

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let header = secret().sign(NOW, b"{}");
        assert!(header.starts_with(&format!("t={NOW},v1=")));
        assert_eq!(secret().verify(Some(&header), b"{}", NOW), Ok(()));
        assert_eq!(secret().verify(Some(&header), b"{}", NOW + 300), Ok(()));
    }

    #[test]
    fn another_body_secret_or_timestamp_does_not_verify() {
        let header = secret().sign(NOW, b"{}");
        assert_eq!(
            secret().verify(Some(&header), b"{ }", NOW),
            Err(SignatureError::Mismatch)
        );
        let other = WebhookSecret::new(SecretString::from("o".repeat(32))).unwrap();
        assert_eq!(
            other.verify(Some(&header), b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
        let moved = header.replace(&NOW.to_string(), &(NOW + 1).to_string());
        assert_eq!(
            secret().verify(Some(&moved), b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_and_future_signatures_are_refused() {
        let old = secret().sign(NOW - 301, b"{}");
        assert_eq!(
            secret().verify(Some(&old), b"{}", NOW),
            Err(SignatureError::Stale)
        );
        let ahead = secret().sign(NOW + 31, b"{}");
        assert_eq!(
            secret().verify(Some(&ahead), b"{}", NOW),
            Err(SignatureError::FromTheFuture)
        );
        let slightly_ahead = secret().sign(NOW + 30, b"{}");
        assert_eq!(secret().verify(Some(&slightly_ahead), b"{}", NOW), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                secret().verify(Some(header), b"{}", NOW),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
        assert_eq!(
            secret().verify(None, b"{}", NOW),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_secret_must_not_be_short() {
        assert!(matches!(
            WebhookSecret::new(SecretString::from("short")),
            Err(WebhookSecretError::TooShort)
        ));
        assert!(WebhookSecret::new(SecretString::from("sixteen bytes ok")).is_ok());
    }
}
