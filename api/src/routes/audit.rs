//! Audit endpoints: the event log itself, for auditors and admins.
//!
//! These read the sequenced log in Postgres, not read models, so they are
//! never behind: an entry is here as soon as the relay has numbered it. Each
//! entry carries its links in the log's hash chains, and `/audit/verify`
//! recomputes those chains over the whole log.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use commands::CommandError;
use cqrs_es::Aggregate;
use domain::access::AggregateKind;
use domain::booking::Booking;
use domain::chat::Chat;
use domain::payment::Payment;
use domain::user::User;
use domain::values::{Actor, Role};
use domain::ValidationError;
use herald_nats::log::chain::{self, AsOf, AuditEntry, Checkpoint, Verification};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::command::{Fields, Path};
use crate::error::ApiError;
use crate::openapi;
use crate::routes::reads::Query;
use crate::AppState;

/// Entries a page of the log holds when the client does not say.
const DEFAULT_LIMIT: i64 = 100;
/// Most entries a page may hold.
const MAX_LIMIT: i64 = 1000;

/// The audit routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(aggregate_events))
        .routes(routes!(aggregate_as_of))
        .routes(routes!(verify))
}

/// Only auditors, and admins who answer for the platform, read the log: it
/// holds every message and address ever written.
fn may_audit(actor: Actor) -> Result<(), ApiError> {
    if actor.role == Role::Auditor || actor.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only auditors and admins read the event log",
        ))
    }
}

/// A page of the log; pass `next_after` as `after` for the next page, until
/// it is `null`.
#[derive(Debug, Serialize, ToSchema)]
struct EventPage {
    /// Entries in position order.
    items: Vec<AuditEntry>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<i64>,
}

/// Paging of the log. Read as text so that a bad value is a 422 naming it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Entries after this position (the previous page's `next_after`); 0 when absent.
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
    /// Entries per page, 1 to 1000; 100 when absent.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Only this aggregate type: `Chat`, `Booking`, `Payment` or `User`.
    #[param(value_type = Option<String>)]
    aggregate_type: Option<String>,
}

/// The global event log in commit order.
#[utoipa::path(
    get,
    path = "/events",
    tag = "audit",
    operation_id = "list_events",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of the log", body = EventPage),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list_events(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    may_audit(actor)?;
    let mut fields = Fields::default();
    let after = fields.optional(query.after, |raw| {
        raw.parse::<i64>()
            .ok()
            .filter(|after| *after >= 0)
            .ok_or_else(|| ValidationError::new("after", "must be a position, 0 or more"))
    });
    let limit = fields.optional(query.limit, |raw| {
        raw.parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                ValidationError::new(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })
    });
    let aggregate_type = fields.optional(query.aggregate_type, |raw| {
        AggregateKind::parse(&raw).ok_or_else(|| {
            ValidationError::new("aggregate_type", "must be Chat, Booking, Payment or User")
        })
    });
    let ((after, limit), aggregate_type) = fields.finish(after.zip(limit).zip(aggregate_type))?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let items = chain::entries_after(
        app.write.pool(),
        after.unwrap_or(0),
        limit,
        aggregate_type.map(AggregateKind::as_str),
    )
    .await?;
    let next_after = items
        .last()
        .filter(|_| items.len() as i64 == limit)
        .map(|last| last.entry.position);
    Ok(Json(EventPage { items, next_after }))
}

/// An aggregate's whole history.
#[derive(Debug, Serialize, ToSchema)]
struct AggregateHistory {
    /// Its entries in order.
    items: Vec<AuditEntry>,
}

/// One aggregate's history.
#[utoipa::path(
    get,
    path = "/aggregates/{type}/{id}/events",
    tag = "audit",
    operation_id = "aggregate_events",
    params(
        ("type" = String, Path, description = "`Chat`, `Booking`, `Payment` or `User`"),
        ("id" = String, Path, description = "The aggregate's id"),
    ),
    responses(
        (status = 200, description = "Its entries", body = AggregateHistory),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn aggregate_events(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
) -> Result<Json<AggregateHistory>, ApiError> {
    may_audit(actor)?;
    let aggregate_type = AggregateKind::parse(&aggregate_type)
        .ok_or(ApiError::NotFound("no such aggregate type"))?;
    let items = chain::aggregate_entries(
        app.write.pool(),
        aggregate_type.as_str(),
        &aggregate_id,
        AsOf::Now,
    )
    .await?;
    if items.is_empty() {
        return Err(ApiError::NotFound("no aggregate with that id"));
    }
    Ok(Json(AggregateHistory { items }))
}

/// The point to fold up to.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AsOfQuery {
    /// A log position or an RFC 3339 time; now when absent.
    #[param(value_type = Option<String>)]
    as_of: Option<String>,
}

/// An aggregate as it was after its last event at or before `as_of`.
#[derive(Debug, Serialize, ToSchema)]
struct AggregateState {
    /// `Chat`, `Booking`, `Payment` or `User`.
    aggregate_type: &'static str,
    /// The aggregate's id.
    aggregate_id: String,
    /// The sequence of the last event folded in.
    version: i64,
    /// That event's log position.
    position: i64,
    /// When that event was stored.
    recorded_at: DateTime<Utc>,
    /// The aggregate's state, as the domain serializes it.
    #[schema(value_type = Object)]
    state: Value,
}

/// A position (`42`) or an RFC 3339 time (`2026-11-21T10:00:00Z`).
fn parse_as_of(raw: String) -> Result<AsOf, ValidationError> {
    if let Ok(position) = raw.parse::<i64>() {
        return if position >= 0 {
            Ok(AsOf::Position(position))
        } else {
            Err(ValidationError::new("as_of", "a position is 0 or more"))
        };
    }
    DateTime::parse_from_rfc3339(&raw)
        .map(|time| AsOf::Time(time.with_timezone(&Utc)))
        .map_err(|_| ValidationError::new("as_of", "must be a log position or an RFC 3339 time"))
}

/// An aggregate's state folded up to a point of the log.
#[utoipa::path(
    get,
    path = "/aggregates/{type}/{id}",
    tag = "audit",
    operation_id = "aggregate_as_of",
    params(
        ("type" = String, Path, description = "`Chat`, `Booking`, `Payment` or `User`"),
        ("id" = String, Path, description = "The aggregate's id"),
        AsOfQuery,
    ),
    responses(
        (status = 200, description = "The folded state", body = AggregateState),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn aggregate_as_of(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Query(query): Query<AsOfQuery>,
) -> Result<Json<AggregateState>, ApiError> {
    may_audit(actor)?;
    let aggregate_type = AggregateKind::parse(&aggregate_type)
        .ok_or(ApiError::NotFound("no such aggregate type"))?;
    let mut fields = Fields::default();
    let as_of = fields.optional(query.as_of, parse_as_of);
    let as_of = fields.finish(as_of)?.unwrap_or(AsOf::Now);
    let entries = chain::aggregate_entries(
        app.write.pool(),
        aggregate_type.as_str(),
        &aggregate_id,
        as_of,
    )
    .await?;
    let last = entries.last().ok_or(ApiError::NotFound(
        "no aggregate with that id at that point",
    ))?;
    let state = match aggregate_type {
        AggregateKind::Chat => fold::<Chat>(&entries),
        AggregateKind::Booking => fold::<Booking>(&entries),
        AggregateKind::Payment => fold::<Payment>(&entries),
        AggregateKind::User => fold::<User>(&entries),
    }
    .map_err(|err| ApiError::Command(CommandError::Internal(err.into())))?;
    Ok(Json(AggregateState {
        aggregate_type: aggregate_type.as_str(),
        aggregate_id,
        version: last.entry.sequence,
        position: last.entry.position,
        recorded_at: last.entry.recorded_at,
        state,
    }))
}

/// Applies the entries' events to a fresh aggregate with the domain's own
/// `apply`, after bringing older event shapes up to date.
fn fold<A: Aggregate>(entries: &[AuditEntry]) -> Result<Value, serde_json::Error> {
    let mut aggregate = A::default();
    for AuditEntry { entry, .. } in entries {
        aggregate.apply(entry.decode::<A::Event>()?);
    }
    serde_json::to_value(&aggregate)
}

/// A checkpoint the log must still pass through.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VerifyQuery {
    /// `<position>:<hash>` as `herald audit checkpoint` printed it.
    #[param(value_type = Option<String>)]
    expect: Option<String>,
}

/// Recomputes both hash chains over the whole log.
#[utoipa::path(
    get,
    path = "/audit/verify",
    tag = "audit",
    operation_id = "verify_log",
    params(VerifyQuery),
    responses(
        (status = 200, description = "What the verification found", body = Verification),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]

async fn verify(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<VerifyQuery>,
) -> Result<Json<Verification>, ApiError> {
    may_audit(actor)?;
    let mut fields = Fields::default();
    let expect = fields.optional(query.expect, |raw| {
        raw.parse::<Checkpoint>()
            .map_err(|err| ValidationError::new("expect", err.to_string()))
    });
    let expect = fields.finish(expect)?;
    let verification = chain::verify(app.write.pool(), expect, |_, _| {}).await?;
    Ok(Json(verification))
}
