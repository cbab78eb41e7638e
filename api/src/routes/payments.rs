//! Payment commands: pay for a booking, refund by hand.
//!
//! A refund requested here is recorded as `RefundRequested`; the payment
//! process manager then asks the provider for it, as it does for refunds of
//! cancelled bookings, so there is one path to the provider's refunds.

use axum::extract::State;
use chrono::Utc;
use commands::payments::{start_payment, StartPayment};
use commands::{CommandError, Committed, NewId};
use domain::payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
use domain::values::{PaymentMethod, Reason};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::command::{Accepted, Answer, CommandRequest, Fields, Path};
use crate::error::ApiError;
use crate::openapi::{self, IdempotencyKeyHeader};
use crate::AppState;

/// The payment command routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(initiate))
        .routes(routes!(refund))
}

/// A payment for a booking. Fields are read as optional so that a missing one
/// is a 422 naming it; the contract requires `booking_id` and `method`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Initiate {
    /// The payment's id; generated when absent.
    id: Option<Uuid>,
    /// The booking paid for.
    #[schema(value_type = Uuid, required = true)]
    booking_id: Option<Uuid>,
    /// How the patient pays.
    #[schema(value_type = PaymentMethod, required = true)]
    method: Option<String>,
}

/// Starts a payment: the amount is the booking's, the provider opens a charge,
/// and the answer carries the page where the patient confirms it.
#[utoipa::path(
    post,
    path = "/payments",
    tag = "payments",
    operation_id = "initiate_payment",
    params(IdempotencyKeyHeader),
    request_body = Initiate,
    responses(
        (status = 201, description = "The charge was opened (PaymentInitiated), status `pending`", body = PaymentStarted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 502, response = openapi::BadGateway),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn initiate(
    State(app): State<AppState>,
    request: CommandRequest<Initiate>,
) -> Result<Answer<PaymentStarted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let booking_id = fields.required("booking_id", body.booking_id);
    let method = fields.parse("method", body.method, |m| m.parse::<PaymentMethod>());
    let (booking_id, method) = fields.finish(booking_id.zip(method))?;
    let start = StartPayment {
        actor,
        payment_id: NewId::of(body.id),
        booking_id,
        method,
    };
    let committed = start_payment(&app.write, app.gateway.as_ref(), start, &metadata).await?;
    started(&committed)
}

/// The answer to a started payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentStarted {
    /// The payment, its version and the consistency token that shows it.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// Always `pending`: the patient has yet to confirm it.
    pub status: PaymentStatus,
    /// The booking paid for.
    pub booking_id: Uuid,
    /// The booking's price, in minor units.
    pub amount_minor: i64,
    /// The price's ISO 4217 currency.
    pub currency: String,
    /// The provider's reference for the charge; `null` only for payments
    /// started before the provider was asked at once.
    pub provider_payment_id: Option<String>,
    /// Where the patient confirms the charge; `null` like the reference.
    pub confirmation_url: Option<String>,
}

/// The answer to a started payment, read from its `PaymentInitiated`.
fn started(committed: &Committed<Payment>) -> Result<Answer<PaymentStarted>, ApiError> {
    let Some(PaymentEvent::PaymentInitiated {
        booking_id,
        amount,
        provider_payment_id,
        confirmation_url,
        ..
    }) = committed.events.first()
    else {
        return Err(CommandError::Internal(
            "a started payment has no PaymentInitiated to answer with".into(),
        )
        .into());
    };
    Ok(Answer::created(
        committed,
        PaymentStarted {
            accepted: Accepted::of(committed),
            status: PaymentStatus::Pending,
            booking_id: *booking_id,
            amount_minor: amount.amount_minor(),
            currency: amount.currency().as_str().to_owned(),
            provider_payment_id: provider_payment_id.clone(),
            confirmation_url: confirmation_url.clone(),
        },
    ))
}

/// The answer to a payment command that changed its status.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentChanged {
    /// The payment, its version and consistency token.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The payment's status after the command.
    pub status: PaymentStatus,
}

/// Why a payment is refunded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Refund {
    /// The reason; not blank.
    #[schema(value_type = String, required = true, min_length = 1)]
    reason: Option<String>,
}

/// An admin refunds a succeeded payment; the provider is asked for it.
#[utoipa::path(
    post,
    path = "/payments/{id}/refund",
    tag = "payments",
    operation_id = "refund_payment",
    params(("id" = Uuid, Path, description = "The payment"), IdempotencyKeyHeader),
    request_body = Refund,
    responses(
        (status = 200, description = "The refund was requested (RefundRequested)", body = PaymentChanged),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn refund(
    State(app): State<AppState>,
    Path(payment_id): Path<Uuid>,
    request: CommandRequest<Refund>,
) -> Result<Answer<PaymentChanged>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let reason = fields.parse("reason", body.reason, Reason::parse);
    let command = fields.finish(reason.map(|reason| PaymentCommand::RequestRefund {
        actor,
        reason,
        at: Utc::now(),
    }))?;
    let committed = app
        .write
        .execute::<Payment>(payment_id, command, &metadata)
        .await?;
    Ok(Answer::ok(
        &committed,
        PaymentChanged {
            accepted: Accepted::of(&committed),
            status: PaymentStatus::RefundPending,
        },
    ))
}
