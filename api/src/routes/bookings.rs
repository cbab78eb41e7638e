//! Booking commands: request a visit, assign a doctor, complete, cancel.

use axum::extract::State;
use chrono::{DateTime, Utc};
use commands::{Committed, NewId};
use domain::booking::{Booking, BookingCommand, BookingStatus};
use domain::values::{Address, CallType, Currency, Money, Reason};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::command::{Accepted, Answer, CommandRequest, Fields, Path};
use crate::error::ApiError;
use crate::openapi::{self, IdempotencyKeyHeader};
use crate::routes::chats::NoBody;
use crate::AppState;

/// The booking command routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request))
        .routes(routes!(assign))
        .routes(routes!(complete))
        .routes(routes!(cancel))
}

/// The answer to an accepted booking command.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingAccepted {
    /// The booking, its version and consistency token.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The booking's status after the command.
    pub status: BookingStatus,
}

impl BookingAccepted {
    /// The answer of a command that left the booking in `status`.
    fn answer(committed: &Committed<Booking>, status: BookingStatus) -> Self {
        Self {
            accepted: Accepted::of(committed),
            status,
        }
    }
}

/// A visit a patient asks for. Fields are read as optional so that a missing
/// one is a 422 naming it; the contract requires `call_type`, `address` and
/// `amount_minor`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RequestBooking {
    /// The booking's id; generated when absent.
    id: Option<Uuid>,
    /// What kind of visit.
    #[schema(value_type = CallType, required = true)]
    call_type: Option<String>,
    /// Where to go; not blank.
    #[schema(value_type = String, required = true, min_length = 1)]
    address: Option<String>,
    /// The price in kopecks (minor units), more than 0.
    #[schema(value_type = i64, required = true, minimum = 1)]
    amount_minor: Option<i64>,
    /// ISO 4217 code; `RUB` when absent.
    #[schema(value_type = Option<String>, pattern = "^[A-Z]{3}$", example = "RUB")]
    currency: Option<String>,
    /// When, for a `scheduled` visit (required then, and in the future).
    scheduled_at: Option<DateTime<Utc>>,
}

/// A patient asks for a visit; it starts `pending`.
#[utoipa::path(
    post,
    path = "/bookings",
    tag = "bookings",
    operation_id = "request_booking",
    params(IdempotencyKeyHeader),
    request_body = RequestBooking,
    responses(
        (status = 201, description = "The booking was stored (BookingRequested)", body = BookingAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn request(
    State(app): State<AppState>,
    request: CommandRequest<RequestBooking>,
) -> Result<Answer<BookingAccepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let new = NewId::of(body.id);
    let booking_id = new.id();
    let mut fields = Fields::default();
    let call_type = fields.parse("call_type", body.call_type, |t| t.parse::<CallType>());
    let address = fields.parse("address", body.address, Address::parse);
    let currency = fields
        .optional(body.currency, |c| Currency::accept(&c))
        .map(Option::unwrap_or_default);
    let amount_minor = fields.required("amount_minor", body.amount_minor);
    // The amount is checked even when the currency is invalid, so that the
    // client learns about both at once.
    let price = amount_minor
        .and_then(|amount| fields.check(Money::new(amount, currency.clone().unwrap_or_default())))
        .filter(|_| currency.is_some());
    let command = fields.finish(call_type.zip(address).zip(price).map(
        |((call_type, address), price)| BookingCommand::Request {
            actor,
            booking_id,
            call_type,
            address,
            price,
            scheduled_at: body.scheduled_at,
            now: Utc::now(),
        },
    ))?;
    let committed = app.write.create::<Booking>(new, command, &metadata).await?;
    Ok(Answer::created(
        &committed,
        BookingAccepted::answer(&committed, BookingStatus::Pending),
    ))
}

/// The doctor who takes a visit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Assign {
    /// The doctor's user id: an active doctor's account, or the visit is
    /// refused (422).
    #[schema(value_type = Uuid, required = true)]
    doctor_id: Option<Uuid>,
}

/// Assigns a doctor: an admin assigns anyone, a doctor only themself.
#[utoipa::path(
    post,
    path = "/bookings/{id}/assign",
    tag = "bookings",
    operation_id = "assign_doctor",
    params(("id" = Uuid, Path, description = "The booking"), IdempotencyKeyHeader),
    request_body = Assign,
    responses(
        (status = 200, description = "The doctor was assigned (DoctorAssigned)", body = BookingAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn assign(
    State(app): State<AppState>,
    Path(booking_id): Path<Uuid>,
    request: CommandRequest<Assign>,
) -> Result<Answer<BookingAccepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let doctor_id = fields.required("doctor_id", body.doctor_id);
    let doctor_id = fields.finish(doctor_id)?;
    let command = BookingCommand::AssignDoctor {
        actor,
        doctor: app.write.person(doctor_id).await?,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Booking>(booking_id, command, &metadata)
        .await?;
    Ok(Answer::ok(
        &committed,
        BookingAccepted::answer(&committed, BookingStatus::Assigned),
    ))
}

/// The assigned doctor completes the visit.
#[utoipa::path(
    post,
    path = "/bookings/{id}/complete",
    tag = "bookings",
    operation_id = "complete_booking",
    params(("id" = Uuid, Path, description = "The booking"), IdempotencyKeyHeader),
    responses(
        (status = 200, description = "The visit is completed (BookingCompleted)", body = BookingAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn complete(
    State(app): State<AppState>,
    Path(booking_id): Path<Uuid>,
    request: CommandRequest<NoBody>,
) -> Result<Answer<BookingAccepted>, ApiError> {
    let CommandRequest {
        actor, metadata, ..
    } = request;
    let command = BookingCommand::Complete {
        actor,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Booking>(booking_id, command, &metadata)
        .await?;
    Ok(Answer::ok(
        &committed,
        BookingAccepted::answer(&committed, BookingStatus::Completed),
    ))
}

/// Why a visit is called off.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Cancel {
    /// The reason; not blank.
    #[schema(value_type = String, required = true, min_length = 1)]
    reason: Option<String>,
}

/// Its patient or an admin cancels a pending or assigned visit; a paid one is
/// refunded by itself.
#[utoipa::path(
    post,
    path = "/bookings/{id}/cancel",
    tag = "bookings",
    operation_id = "cancel_booking",
    params(("id" = Uuid, Path, description = "The booking"), IdempotencyKeyHeader),
    request_body = Cancel,
    responses(
        (status = 200, description = "The visit is cancelled (BookingCancelled)", body = BookingAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn cancel(
    State(app): State<AppState>,
    Path(booking_id): Path<Uuid>,
    request: CommandRequest<Cancel>,
) -> Result<Answer<BookingAccepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let reason = fields.parse("reason", body.reason, Reason::parse);
    let command = fields.finish(reason.map(|reason| BookingCommand::Cancel {
        actor,
        reason,
        at: Utc::now(),
    }))?;
    let committed = app
        .write
        .execute::<Booking>(booking_id, command, &metadata)
        .await?;
    Ok(Answer::ok(
        &committed,
        BookingAccepted::answer(&committed, BookingStatus::Cancelled),
    ))
}
