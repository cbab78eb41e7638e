//! The built-in `sandbox` payment provider, served by Herald under `/sandbox`.
//!
//! It behaves like a real acquirer, so the whole payment flow can be run and
//! tested without one:
//!
//! - `POST /sandbox/api/payments` opens a charge (idempotent by
//!   `Idempotence-Key`) and answers its confirmation page;
//! - `GET /sandbox/payments/{id}` is that page: plain HTML with the amount and
//!   two buttons, success and failure;
//! - choosing sends the signed `payment.succeeded` or `payment.canceled`
//!   notification to Herald's `/webhooks/payments` over HTTP, retrying with
//!   backoff while Herald answers an error;
//! - `POST /sandbox/api/refunds` returns a succeeded charge and confirms it
//!   with a `refund.succeeded` notification.
//!
//! Its API answers only the shop it was configured with (HTTP Basic with the
//! shop id and secret key, as real acquirers ask), so only Herald opens charges
//! and refunds. Anyone who can reach a charge's page can still confirm it: it is
//! for development and tests, never for real money, and is served only where it
//! is switched on (`--dev` or `HERALD_SANDBOX`). Its records live in
//! `sandbox_*` tables.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::Utc;
use commands::gateway::sandbox::{
    ChargeAnswer, ChargeBody, RefundAnswer, RefundBody, CHARGES_PATH, IDEMPOTENCE_KEY, REFUNDS_PATH,
};
use commands::gateway::{
    Notification, NotificationEvent, NotificationMetadata, NotificationObject, ProviderAmount,
    ShopCredentials,
};
use domain::values::{Currency, Money};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::command::Path;
use crate::error::ApiError;
use crate::openapi;
use crate::provider::webhook::{self, WebhookSecret};
use crate::AppState;

/// How a notification is redelivered while Herald answers an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// Pause after the first failed delivery; it doubles after each further one.
    pub first_backoff: Duration,
    /// Longest pause between two deliveries.
    pub max_backoff: Duration,
    /// Deliveries before giving up, the first included.
    pub attempts: u32,
    /// Longest one delivery may take.
    pub timeout: Duration,
}

impl Default for Redelivery {
    /// About ten minutes of retries, like a provider that does not give up at
    /// the first restart of the shop's server.
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            attempts: 25,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The sandbox provider: where its pages point and where it delivers.
pub struct Sandbox {
    public_url: String,
    secret: WebhookSecret,
    shop: ShopCredentials,
    redelivery: Redelivery,
    http: reqwest::Client,
}

impl Sandbox {
    /// A sandbox reachable at `public_url` (Herald's own, e.g.
    /// `http://127.0.0.1:8080`) that serves the shop of `shop`, delivering to
    /// `<public_url>/webhooks/payments` signed with `secret`.
    pub fn new(
        public_url: &str,
        secret: WebhookSecret,
        shop: ShopCredentials,
        redelivery: Redelivery,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            public_url: public_url.trim_end_matches('/').to_owned(),
            secret,
            shop,
            http: reqwest::Client::builder()
                .timeout(redelivery.timeout)
                .build()?,
            redelivery,
        })
    }

    /// Whether `headers` carry the shop's id and secret key (HTTP Basic).
    /// Digests are compared, so the time taken tells nothing about the key.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        const REFUSED: ApiError =
            ApiError::Unauthorized("the sandbox API needs the shop id and secret key (HTTP Basic)");
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
            })
            .ok_or(REFUSED)?;
        let expected = format!(
            "{}:{}",
            self.shop.shop_id,
            self.shop.secret_key.expose_secret()
        );
        if Sha256::digest(&given) == Sha256::digest(expected.as_bytes()) {
            Ok(())
        } else {
            Err(REFUSED)
        }
    }

    fn page_url(&self, provider_payment_id: &str) -> String {
        format!("{}/sandbox/payments/{provider_payment_id}", self.public_url)
    }

    /// Delivers `notification` in the background until Herald accepts it or
    /// the attempts run out; each delivery is signed afresh, as its timestamp
    /// must be current.
    fn deliver(self: &Arc<Self>, notification: Notification) {
        let sandbox = self.clone();
        tokio::spawn(async move {
            let target = format!("{}{}", sandbox.public_url, webhook::PATH);
            let body = match serde_json::to_vec(&notification) {
                Ok(body) => body,
                Err(err) => {
                    tracing::error!(%err, "sandbox: cannot encode a notification");
                    return;
                }
            };
            let mut backoff = sandbox.redelivery.first_backoff;
            for attempt in 1..=sandbox.redelivery.attempts {
                let signature = sandbox.secret.sign(Utc::now().timestamp(), &body);
                let sent = sandbox
                    .http
                    .post(&target)
                    .header(webhook::SIGNATURE_HEADER, signature)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        tracing::info!(
                            event = notification.event,
                            object = notification.object.id,
                            attempt,
                            "sandbox: notification delivered"
                        );
                        return;
                    }
                    Ok(response) => {
                        tracing::info!(event = notification.event, object = notification.object.id, attempt, status = %response.status(), "sandbox: notification not accepted; retrying");
                    }
                    Err(err) => {
                        tracing::info!(event = notification.event, object = notification.object.id, attempt, %err, "sandbox: notification not delivered; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(sandbox.redelivery.max_backoff);
            }
            tracing::warn!(
                event = notification.event,
                object = notification.object.id,
                "sandbox: gave up delivering a notification"
            );
        });
    }
}

/// The sandbox's routes, at the top level, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open_charge))
        .routes(routes!(refund))
        .routes(routes!(page))
        .routes(routes!(succeed))
        .routes(routes!(fail))
}

fn sandbox(app: &AppState) -> Result<&Arc<Sandbox>, ApiError> {
    app.sandbox
        .as_ref()
        .ok_or(ApiError::NotFound("the sandbox provider is not enabled"))
}

fn bad_json(rejection: JsonRejection) -> ApiError {
    ApiError::BadRequest(format!("the body is not valid: {}", rejection.body_text()))
}

fn idempotence_key(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(IDEMPOTENCE_KEY)
        .and_then(|value| value.to_str().ok())
        .filter(|key| commands::is_valid_key_length(key))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::BadRequest(format!("the {IDEMPOTENCE_KEY} header is required")))
}

/// A charge as the sandbox keeps it.
#[derive(Debug, sqlx::FromRow)]
struct Charge {
    provider_payment_id: String,
    payment_id: Uuid,
    amount_minor: i64,
    currency: String,
    description: String,
    status: String,
}

impl Charge {
    fn amount(&self) -> Result<Money, ApiError> {
        Currency::parse(&self.currency)
            .and_then(|currency| Money::new(self.amount_minor, currency))
            .map_err(|err| ApiError::BadRequest(err.to_string()))
    }

    fn notification(
        &self,
        event: NotificationEvent,
        status: &str,
    ) -> Result<Notification, ApiError> {
        Ok(Notification {
            kind: "notification".to_owned(),
            event: event.as_str().to_owned(),
            object: NotificationObject {
                id: self.provider_payment_id.clone(),
                status: status.to_owned(),
                amount: ProviderAmount::from_money(&self.amount()?),
                payment_id: None,
                metadata: NotificationMetadata {
                    payment_id: self.payment_id.to_string(),
                },
            },
        })
    }
}

/// The charge, `refunded` once it was refunded.
async fn find_charge(pool: &PgPool, provider_payment_id: &str) -> Result<Option<Charge>, ApiError> {
    sqlx::query_as(
        "SELECT provider_payment_id, payment_id, amount_minor, currency, description,
                CASE WHEN EXISTS (SELECT FROM sandbox_refunds r
                                   WHERE r.provider_payment_id = p.provider_payment_id)
                     THEN 'refunded' ELSE status END AS status
           FROM sandbox_payments p WHERE provider_payment_id = $1",
    )
    .bind(provider_payment_id)
    .fetch_optional(pool)
    .await
    .map_err(ApiError::from)
}

/// Opens a charge (the provider API Herald's gateway calls).
#[utoipa::path(
    post,
    path = CHARGES_PATH,
    tag = "sandbox",
    operation_id = "sandbox_open_charge",
    params(openapi::IdempotenceKeyHeader),
    request_body = ChargeBody,
    security(("shop" = [])),
    responses(
        (status = 200, description = "The charge, new or opened before with this key", body = ChargeAnswer),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn open_charge(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChargeBody>, JsonRejection>,
) -> Result<Json<ChargeAnswer>, ApiError> {
    let sandbox = sandbox(&app)?;
    sandbox.authenticate(&headers)?;
    let Json(body) = body.map_err(bad_json)?;
    let key = idempotence_key(&headers)?;
    let amount = body
        .amount
        .to_money()
        .map_err(|err| ApiError::Invalid(vec![err]))?;
    let payment_id = Uuid::parse_str(&body.metadata.payment_id).map_err(|_| {
        ApiError::Invalid(vec![domain::ValidationError::new(
            "metadata.payment_id",
            "must be a UUID",
        )])
    })?;
    let pool = app.write.pool();
    let opened: Charge = sqlx::query_as(
        "WITH new AS (
             INSERT INTO sandbox_payments (provider_payment_id, idempotence_key, payment_id,
                                           amount_minor, currency, description, status)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending')
             ON CONFLICT (idempotence_key) DO NOTHING
             RETURNING provider_payment_id, payment_id, amount_minor, currency, description, status)
         SELECT * FROM new
          UNION ALL
         SELECT provider_payment_id, payment_id, amount_minor, currency, description, status
           FROM sandbox_payments WHERE idempotence_key = $2
          LIMIT 1",
    )
    .bind(format!("sbx_{}", Uuid::new_v4().simple()))
    .bind(&key)
    .bind(payment_id)
    .bind(amount.amount_minor())
    .bind(amount.currency().as_str())
    .bind(&body.description)
    .fetch_one(pool)
    .await?;
    Ok(Json(ChargeAnswer {
        confirmation_url: sandbox.page_url(&opened.provider_payment_id),
        id: opened.provider_payment_id,
        status: opened.status,
    }))
}

/// Returns a succeeded charge and confirms it with `refund.succeeded`.
#[utoipa::path(
    post,
    path = REFUNDS_PATH,
    tag = "sandbox",
    operation_id = "sandbox_refund",
    params(openapi::IdempotenceKeyHeader),
    request_body = RefundBody,
    security(("shop" = [])),
    responses(
        (status = 200, description = "The refund, new or asked for before", body = RefundAnswer),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn refund(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RefundBody>, JsonRejection>,
) -> Result<Json<RefundAnswer>, ApiError> {
    let sandbox = sandbox(&app)?;
    sandbox.authenticate(&headers)?;
    let Json(body) = body.map_err(bad_json)?;
    let key = idempotence_key(&headers)?;
    let pool = app.write.pool();
    let charge = find_charge(pool, &body.payment_id)
        .await?
        .ok_or(ApiError::NotFound("the sandbox has no such charge"))?;
    // A refunded charge is asked again: the same refund is confirmed again.
    if !matches!(charge.status.as_str(), "succeeded" | "refunded") {
        return Err(ApiError::BadRequest(
            "only a succeeded charge can be refunded".to_owned(),
        ));
    }
    let amount = charge.amount()?;
    if body.amount != ProviderAmount::from_money(&amount) {
        return Err(ApiError::BadRequest(
            "only whole charges are refunded: the amount must be the charge's".to_owned(),
        ));
    }
    let provider_refund_id: String = sqlx::query_scalar(
        "WITH new AS (
             INSERT INTO sandbox_refunds (provider_refund_id, idempotence_key, provider_payment_id)
             VALUES ($1, $2, $3)
             ON CONFLICT (provider_payment_id) DO NOTHING
             RETURNING provider_refund_id)
         SELECT provider_refund_id FROM new
          UNION ALL
         SELECT provider_refund_id FROM sandbox_refunds WHERE provider_payment_id = $3
          LIMIT 1",
    )
    .bind(format!("sbx_refund_{}", Uuid::new_v4().simple()))
    .bind(&key)
    .bind(&charge.provider_payment_id)
    .fetch_one(pool)
    .await?;
    // Confirmed at once, as a sandbox can; a repeated request confirms again,
    // which Herald takes as the duplicate it is.
    let mut notification = charge.notification(NotificationEvent::RefundSucceeded, "succeeded")?;
    notification.object.payment_id = Some(notification.object.id.clone());
    notification.object.id = provider_refund_id.clone();
    sandbox.deliver(notification);
    Ok(Json(RefundAnswer {
        id: provider_refund_id,
        status: "pending".to_owned(),
    }))
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.chars()
        .fold(String::with_capacity(text.len()), |mut out, c| {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
            out
        })
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · Herald sandbox</title>\
         <style>body{{font-family:sans-serif;max-width:32em;margin:3em auto}}\
         button{{font-size:1.1em;padding:.5em 1.2em;margin-right:1em}}</style>\
         </head><body><h1>{title}</h1>{body}\
         <p><small>Herald sandbox payment provider: no real money moves.</small></p>\
         </body></html>",
        title = escape(title),
    );
    (status, Html(page)).into_response()
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "No such payment",
        "<p>The sandbox has no payment with this id.</p>",
    )
}

/// The page where a person confirms or declines a charge.
#[utoipa::path(
    get,
    path = "/sandbox/payments/{id}",
    tag = "sandbox",
    operation_id = "sandbox_page",
    params(("id" = String, Path, description = "The provider's reference for the charge")),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 404, description = "No such charge", content_type = "text/html", body = String),
        (status = 400, response = openapi::BadRequest),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn page(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    sandbox(&app)?;
    let Some(charge) = find_charge(app.write.pool(), &id).await? else {
        return Ok(not_found());
    };
    let amount = ProviderAmount::from_money(&charge.amount()?);
    let id = escape(&charge.provider_payment_id);
    let mut body = format!(
        "<p>{}</p><p><strong>{} {}</strong></p><p>Status: <strong>{}</strong></p>",
        escape(&charge.description),
        escape(&amount.value),
        escape(&amount.currency),
        escape(&charge.status),
    );
    if charge.status == "pending" {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/sandbox/payments/{id}/succeed\" style=\"display:inline\">\
             <button type=\"submit\">Pay (success)</button></form>\
             <form method=\"post\" action=\"/sandbox/payments/{id}/fail\" style=\"display:inline\">\
             <button type=\"submit\">Decline (failure)</button></form>"
        );
    }
    Ok(html(StatusCode::OK, "Confirm the payment", &body))
}

/// A person confirms the charge; Herald is sent `payment.succeeded`.
#[utoipa::path(
    post,
    path = "/sandbox/payments/{id}/succeed",
    tag = "sandbox",
    operation_id = "sandbox_succeed",
    params(("id" = String, Path, description = "The provider's reference for the charge")),
    responses(
        (status = 200, description = "Settled; Herald is being notified", content_type = "text/html", body = String),
        (status = 404, description = "No such charge", content_type = "text/html", body = String),
        (status = 409, description = "Already settled the other way", content_type = "text/html", body = String),
        (status = 400, response = openapi::BadRequest),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn succeed(state: State<AppState>, id: Path<String>) -> Result<Response, ApiError> {
    choose(state, id, "succeeded", NotificationEvent::PaymentSucceeded).await
}

/// A person declines the charge; Herald is sent `payment.canceled`.
#[utoipa::path(
    post,
    path = "/sandbox/payments/{id}/fail",
    tag = "sandbox",
    operation_id = "sandbox_fail",
    params(("id" = String, Path, description = "The provider's reference for the charge")),
    responses(
        (status = 200, description = "Settled; Herald is being notified", content_type = "text/html", body = String),
        (status = 404, description = "No such charge", content_type = "text/html", body = String),
        (status = 409, description = "Already settled the other way", content_type = "text/html", body = String),
        (status = 400, response = openapi::BadRequest),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn fail(state: State<AppState>, id: Path<String>) -> Result<Response, ApiError> {
    choose(state, id, "canceled", NotificationEvent::PaymentCanceled).await
}

/// Settles a pending charge as the person chose and notifies Herald. Choosing
/// the same again notifies again (a person reloading the page); choosing the
/// other outcome of a settled charge is refused.
async fn choose(
    State(app): State<AppState>,
    Path(id): Path<String>,
    status: &str,
    event: NotificationEvent,
) -> Result<Response, ApiError> {
    let sandbox = sandbox(&app)?;
    let settled: Option<Charge> = sqlx::query_as(
        "UPDATE sandbox_payments SET status = $2
          WHERE provider_payment_id = $1 AND status IN ('pending', $2)
         RETURNING provider_payment_id, payment_id, amount_minor, currency, description, status",
    )
    .bind(&id)
    .bind(status)
    .fetch_optional(app.write.pool())
    .await?;
    let Some(charge) = settled else {
        return Ok(match find_charge(app.write.pool(), &id).await? {
            None => not_found(),
            Some(charge) => html(
                StatusCode::CONFLICT,
                "Already settled",
                &format!("<p>This payment is already {}.</p>", escape(&charge.status)),
            ),
        });
    };
    sandbox.deliver(charge.notification(event, status)?);
    let outcome = if event == NotificationEvent::PaymentSucceeded {
        "Payment succeeded"
    } else {
        "Payment declined"
    };
    Ok(html(
        StatusCode::OK,
        outcome,
        "<p>Herald is being notified. You can close this tab.</p>",
    ))
}
