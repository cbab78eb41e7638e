//! Query endpoints: answers from the projections' read models.
//!
//! Each read first waits for the caller's consistency token (if any) on the
//! projections it reads, then shows only what the caller may see. Rows the
//! caller may not see answer 404, like rows that do not exist, so ids cannot be
//! probed; a role that may never use an endpoint gets 403 before any waiting.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::State;
use domain::access::{self, BookingScope};
use domain::booking::BookingStatus;
use domain::values::Actor;
use domain::ValidationError;
use futures::FutureExt;
use projections::activity::Activity;
use projections::bookings::{BookingFilter, BookingRow};
use projections::chats::{ChatAccess, ChatDetails, ChatSummary, MessageRow};
use projections::payments::PaymentRow;
use projections::summary::Summary;
use projections::{activity, bookings, chats, payments, summary, ListHead, Projection};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::command::{Fields, Path};
use crate::conditional::{ETag, IfNoneMatch, Read};
use crate::consistency::{self, Consistency};
use crate::error::ApiError;
use crate::live::MemberPresence;
use crate::openapi::{self, ConditionalParams, ConsistencyParams};
use crate::AppState;

/// Rows a page holds when the client does not say.
pub(crate) const DEFAULT_LIMIT: i64 = 50;
/// Most rows a page may hold, so one request cannot ask for a whole table.
const MAX_LIMIT: i64 = 200;

/// The read routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_chats))
        .routes(routes!(get_chat))
        .routes(routes!(list_messages))
        .routes(routes!(list_bookings))
        .routes(routes!(get_booking))
        .routes(routes!(list_payments))
        .routes(routes!(get_payment))
        .routes(routes!(get_summary))
        .routes(routes!(get_activity))
}

/// Query-string parameters. Every field of a query struct is an optional
/// string parsed by the handler, so a bad value is a 422 naming its field;
/// only a query string that cannot be read at all is a 400. Unknown
/// parameters, such as `consistency`, are left to other extractors.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!(
            "the query string is not valid: {}",
            rejection.body_text()
        ))
    }
}

/// The caller's chats, wrapped so the answer can gain fields later.
#[derive(Debug, Serialize, ToSchema)]
struct ChatList {
    /// Every chat the caller is a member of.
    items: Vec<ChatSummary>,
}

/// One chat with whether its members are online: its read model row, and
/// presence, which is never stored in Postgres.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatView {
    #[serde(flatten)]
    chat: ChatDetails,
    /// Whether each member is online and, for those who are not, when they
    /// were last seen, by id. Shown to whoever may see the chat, since they
    /// share it with every member or are admins
    /// ([`access::may_see_presence`]). Everyone shows offline, and no
    /// last-seen time, on an instance without a live gateway.
    member_presence: BTreeMap<Uuid, MemberPresence>,
}

/// A page of a chat's messages, newest first; pass `next_before_seq` as
/// `before_seq` for the older ones, until it is `null`.
#[derive(Debug, Serialize, ToSchema)]
struct MessagePage {
    /// The messages.
    items: Vec<MessageRow>,
    /// Pass as `before_seq` for older messages; `null` on the last page.
    next_before_seq: Option<i64>,
}

/// A page of bookings; `next_cursor` is `null` on the last page.
#[derive(Debug, Serialize, ToSchema)]
struct BookingPage {
    /// The bookings, newest request first.
    items: Vec<BookingRow>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A booking's payments, few enough to answer whole, wrapped so the answer
/// can gain fields later.
#[derive(Debug, Serialize, ToSchema)]
struct PaymentList {
    /// Every payment started for the booking.
    items: Vec<PaymentRow>,
}

pub(crate) fn page_limit(raw: String) -> Result<i64, ValidationError> {
    raw.parse::<i64>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| {
            ValidationError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// Cuts `items`, read one more than `limit` to learn whether another page
/// follows, to the page, and names the cursor of the next page if one does.
pub(crate) fn next_page<T, C>(
    items: &mut Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> Option<C> {
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() <= page {
        return None;
    }
    items.truncate(page);
    items.last().map(cursor)
}

/// A positive whole number, e.g. a sequence number or a cursor.
pub(crate) fn positive(field: &'static str, raw: &str) -> Result<i64, ValidationError> {
    raw.parse::<i64>()
        .ok()
        .filter(|value| *value >= 1)
        .ok_or_else(|| ValidationError::new(field, "must be a positive whole number"))
}

/// A status name as the domain spells it; the domain's enum is the one list.
fn booking_status(raw: String) -> Result<BookingStatus, ValidationError> {
    BookingStatus::deserialize(raw.as_str().into_deserializer())
        .map_err(|err: serde::de::value::Error| ValidationError::new("status", err.to_string()))
}

/// The version of a chat shown to `actor` as [`chat_visible`] says.
async fn visible_chat(app: &AppState, actor: Actor, chat_id: Uuid) -> Result<i64, ApiError> {
    let chat = app
        .readers
        .run(|conn| chats::access(conn, chat_id, actor.user_id).boxed())
        .await?;
    chat_visible(actor, chat).map(|chat| chat.version)
}

/// A chat shown to `actor` as [`access::may_see_chat`] says; to an admin, any
/// chat that exists.
fn chat_visible(actor: Actor, chat: Option<ChatAccess>) -> Result<ChatAccess, ApiError> {
    chat.filter(|chat| access::may_see_chat(actor, chat.member))
        .ok_or(ApiError::NotFound("no chat with that id"))
}

/// How far `projection` has reached, read before a list so that the list's
/// tag is never newer than its rows.
async fn list_head(app: &AppState, projection: Projection) -> Result<ListHead, ApiError> {
    Ok(app
        .readers
        .run(|conn| projections::list_head(conn, projection).boxed())
        .await?)
}

/// The caller's chats.
#[utoipa::path(
    get,
    path = "/chats",
    tag = "chats",
    operation_id = "list_chats",
    params(ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The chats the caller is a member of", body = ChatList),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list_chats(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    held: IfNoneMatch,
) -> Result<Read<ChatList>, ApiError> {
    consistency::wait(&app, &consistency, &[Projection::Chats]).await?;
    let tag = || async {
        let head = list_head(&app, Projection::Chats).await?;
        Ok::<_, ApiError>(ETag::new(head.position, (head.names_version, actor)))
    };
    let build = async {
        let tag = tag().await?;
        let items = app
            .readers
            .run(|conn| chats::list_for_user(conn, actor.user_id).boxed())
            .await?;
        Ok((tag, ChatList { items }))
    };
    app.pages.answer(actor, &held, tag(), build).await
}

/// One chat, for its members and admins.
#[utoipa::path(
    get,
    path = "/chats/{id}",
    tag = "chats",
    operation_id = "get_chat",
    params(("id" = Uuid, Path, description = "The chat"), ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The chat, with whether its members are online", body = ChatView),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn get_chat(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Path(chat_id): Path<Uuid>,
    held: IfNoneMatch,
) -> Result<Read<ChatView>, ApiError> {
    consistency::wait(&app, &consistency, &[Projection::Chats]).await?;
    let chat = app
        .readers
        .run(|conn| chats::get(conn, chat_id).boxed())
        .await?
        .filter(|chat| access::may_see_chat(actor, chat.members.contains(&actor.user_id)))
        .ok_or(ApiError::NotFound("no chat with that id"))?;
    let shares_it = chat.members.contains(&actor.user_id);
    let member_presence = match &app.live {
        Some(hub) if access::may_see_presence(actor, shares_it) => {
            hub.presence().of(&chat.members).await
        }
        _ => (chat.members.iter())
            .map(|member| (*member, MemberPresence::UNKNOWN))
            .collect(),
    };
    // Presence is part of the answer, so a poller hears of it changing.
    let tag = ETag::new(chat.version, (chat.names_version, &member_presence));
    Ok(held.answer(
        tag,
        ChatView {
            chat,
            member_presence,
        },
    ))
}

/// Keyset paging of a chat's messages. Read as text so that a bad value is
/// a 422 naming its parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MessagesQuery {
    /// Only messages before this `seq` (the previous page's `next_before_seq`).
    #[param(value_type = Option<i64>, minimum = 1)]
    before_seq: Option<String>,
    /// Messages per page, 1 to 200; 50 when absent.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// A chat's messages, newest first, for its members and admins.
#[utoipa::path(
    get,
    path = "/chats/{id}/messages",
    tag = "chats",
    operation_id = "list_messages",
    params(("id" = Uuid, Path, description = "The chat"), MessagesQuery, ConsistencyParams,
           ConditionalParams),
    responses(
        (status = 200, description = "A page of messages", body = MessagePage),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list_messages(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Path(chat_id): Path<Uuid>,
    Query(query): Query<MessagesQuery>,
    held: IfNoneMatch,
) -> Result<Read<MessagePage>, ApiError> {
    let mut fields = Fields::default();
    let before_seq = fields.optional(query.before_seq, |raw| positive("before_seq", &raw));
    let limit = fields
        .optional(query.limit, page_limit)
        .map(|limit| limit.unwrap_or(DEFAULT_LIMIT));
    let (before_seq, limit) = fields.finish(before_seq.zip(limit))?;
    consistency::wait(&app, &consistency, &[Projection::Chats]).await?;
    // The tag alone is read from the chat's row; a full read takes the access
    // and the page in one statement.
    let tag_of = |version| ETag::new(version, (before_seq, limit));
    let tag = async { Ok(tag_of(visible_chat(&app, actor, chat_id).await?)) };
    let build = async {
        let (chat, items) = app
            .readers
            .run(|conn| chats::messages(conn, chat_id, actor.user_id, before_seq, limit).boxed())
            .await?
            .unzip();
        let tag = tag_of(chat_visible(actor, chat)?.version);
        let items = items.unwrap_or_default();
        // The first message has seq 1, so a page ending there is the last.
        let next_before_seq = items
            .last()
            .filter(|last| items.len() as i64 == limit && last.seq > 1)
            .map(|last| last.seq);
        Ok((
            tag,
            MessagePage {
                items,
                next_before_seq,
            },
        ))
    };
    app.pages.answer(actor, &held, tag, build).await
}

/// Filtering and paging of bookings. Read as text so that a bad value is a
/// 422 naming its parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct BookingsQuery {
    /// Only bookings in this status.
    #[param(value_type = Option<BookingStatus>)]
    status: Option<String>,
    /// Bookings per page, 1 to 200; 50 when absent.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<String>)]
    cursor: Option<String>,
}

/// The bookings filter of the bookings [`BookingScope::of`] `actor` may see.
fn bookings_scope(actor: Actor) -> Result<BookingFilter, ApiError> {
    Ok(match BookingScope::of(actor)? {
        BookingScope::PatientOf(patient) => BookingFilter {
            patient_id: Some(patient),
            ..BookingFilter::default()
        },
        BookingScope::AssignedTo(doctor) => BookingFilter {
            doctor_id: Some(doctor),
            ..BookingFilter::default()
        },
        BookingScope::All => BookingFilter::default(),
    })
}

/// Bookings the caller may see: a patient their own, a doctor those assigned
/// to them, an admin all.
#[utoipa::path(
    get,
    path = "/bookings",
    tag = "bookings",
    operation_id = "list_bookings",
    params(BookingsQuery, ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "A page of bookings", body = BookingPage),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list_bookings(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Query(query): Query<BookingsQuery>,
    held: IfNoneMatch,
) -> Result<Read<BookingPage>, ApiError> {
    let scope = bookings_scope(actor)?;
    let mut fields = Fields::default();
    let status = fields.optional(query.status, booking_status);
    let limit = fields
        .optional(query.limit, page_limit)
        .map(|limit| limit.unwrap_or(DEFAULT_LIMIT));
    let cursor = fields.optional(query.cursor, |raw| positive("cursor", &raw));
    let ((status, limit), cursor) = fields.finish(status.zip(limit).zip(cursor))?;
    consistency::wait(&app, &consistency, &[Projection::Bookings]).await?;
    let scope_of_tag = (actor, status.map(BookingStatus::as_str), limit, cursor);
    let filter = BookingFilter { status, ..scope };
    // The tag alone is one lookup; a full read takes the version and the
    // page in one statement.
    let tag_of = |head: ListHead| ETag::new(head.position, (head.names_version, scope_of_tag));
    let tag = async {
        let head = app
            .readers
            .run(|conn| bookings::head(conn, filter).boxed())
            .await?;
        Ok(tag_of(head))
    };
    let build = async {
        // One row more than asked tells whether another page follows.
        let (head, mut items) = app
            .readers
            .run(|conn| bookings::list(conn, filter, cursor, limit + 1).boxed())
            .await?;
        let next_cursor = next_page(&mut items, limit, |last| last.created_position.to_string());
        Ok((tag_of(head), BookingPage { items, next_cursor }))
    };
    app.pages.answer(actor, &held, tag, build).await
}

/// One booking, for whoever may see it in the list.
#[utoipa::path(
    get,
    path = "/bookings/{id}",
    tag = "bookings",
    operation_id = "get_booking",
    params(("id" = Uuid, Path, description = "The booking"), ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The booking", body = BookingRow),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn get_booking(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Path(booking_id): Path<Uuid>,
    held: IfNoneMatch,
) -> Result<Read<BookingRow>, ApiError> {
    const NOT_FOUND: ApiError = ApiError::NotFound("no booking with that id");
    let scope = BookingScope::of(actor)?;
    consistency::wait(&app, &consistency, &[Projection::Bookings]).await?;
    let tag = async {
        let version = app
            .readers
            .run(|conn| bookings::version(conn, booking_id).boxed())
            .await?
            .filter(|booking| scope.includes(booking.patient_id, booking.doctor_id))
            .ok_or(NOT_FOUND)?;
        Ok(ETag::new(version.version, version.names_version))
    };
    let build = async {
        let booking = app
            .readers
            .run(|conn| bookings::get(conn, booking_id).boxed())
            .await?
            .filter(|booking| scope.includes(booking.patient_id, booking.doctor_id))
            .ok_or(NOT_FOUND)?;
        Ok((ETag::new(booking.version, booking.names_version), booking))
    };
    app.pages.answer(actor, &held, tag, build).await
}

/// One payment, for the booking's patient and admins.
#[utoipa::path(
    get,
    path = "/payments/{id}",
    tag = "payments",
    operation_id = "get_payment",
    params(("id" = Uuid, Path, description = "The payment"), ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The payment", body = PaymentRow),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn get_payment(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Path(payment_id): Path<Uuid>,
    held: IfNoneMatch,
) -> Result<Read<PaymentRow>, ApiError> {
    consistency::wait(&app, &consistency, &[Projection::Payments]).await?;
    let payment = app
        .readers
        .run(|conn| payments::get(conn, payment_id).boxed())
        .await?
        .filter(|payment| access::may_see_payment(actor, payment.patient_id))
        .ok_or(ApiError::NotFound("no payment with that id"))?;
    Ok(held.answer(ETag::new(payment.version, ()), payment))
}

/// Which booking's payments. Read as text so that a missing or bad value is a
/// 422 naming it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PaymentsQuery {
    /// The booking.
    #[param(value_type = Uuid, required = true)]
    booking_id: Option<String>,
}

/// A booking's payments, for its patient and admins.
#[utoipa::path(
    get,
    path = "/payments",
    tag = "payments",
    operation_id = "list_payments",
    params(PaymentsQuery, ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The booking's payments", body = PaymentList),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list_payments(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Query(query): Query<PaymentsQuery>,
    held: IfNoneMatch,
) -> Result<Read<PaymentList>, ApiError> {
    let mut fields = Fields::default();
    let booking_id = fields.parse("booking_id", query.booking_id, |raw| {
        Uuid::parse_str(&raw).map_err(|_| ValidationError::new("booking_id", "must be a UUID"))
    });
    let booking_id = fields.finish(booking_id)?;
    // The booking says whose payments these are, even before the first one.
    consistency::wait(
        &app,
        &consistency,
        &[Projection::Payments, Projection::Bookings],
    )
    .await?;
    let booking = app
        .readers
        .run(|conn| bookings::get(conn, booking_id).boxed())
        .await?
        .filter(|booking| access::may_see_payment(actor, booking.patient_id))
        .ok_or(ApiError::NotFound("no booking with that id"))?;
    let tag = || async {
        let head = list_head(&app, Projection::Payments).await?;
        Ok::<_, ApiError>(ETag::new(head.position, (booking_id, booking.version)))
    };
    let build = async {
        let tag = tag().await?;
        let items = app
            .readers
            .run(|conn| payments::for_booking(conn, booking_id).boxed())
            .await?;
        Ok((tag, PaymentList { items }))
    };
    app.pages.answer(actor, &held, tag(), build).await
}

/// The admin dashboard: bookings and payments by status, and revenue.
#[utoipa::path(
    get,
    path = "/dashboard/summary",
    tag = "dashboard",
    operation_id = "get_summary",
    params(ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The figures", body = Summary),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn get_summary(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    held: IfNoneMatch,
) -> Result<Read<Summary>, ApiError> {
    access::may_see_business_figures(actor)?;
    consistency::wait(&app, &consistency, &[Projection::Summary]).await?;
    let tag = || async {
        let head = list_head(&app, Projection::Summary).await?;
        Ok::<_, ApiError>(ETag::new(head.position, ()))
    };
    let build = async {
        let tag = tag().await?;
        let figures = app.readers.run(|conn| summary::get(conn).boxed()).await?;
        Ok((tag, figures))
    };
    app.pages.answer(actor, &held, tag(), build).await
}

/// The dashboard's time series: bookings made, completed and cancelled per
/// hour and per day, revenue per day, messages per minute and the chats
/// active in the last hour, for windows ending now (UTC).
#[utoipa::path(
    get,
    path = "/dashboard/activity",
    tag = "dashboard",
    operation_id = "get_activity",
    params(ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "The series", body = Activity),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn get_activity(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    held: IfNoneMatch,
) -> Result<Read<Activity>, ApiError> {
    access::may_see_business_figures(actor)?;
    consistency::wait(&app, &consistency, &[Projection::Activity]).await?;
    let now = chrono::Utc::now();
    // The windows move with the clock, so the minute they end in is part of
    // the tag.
    let minute = now.timestamp() / 60;
    let tag = || async {
        let head = list_head(&app, Projection::Activity).await?;
        Ok::<_, ApiError>(ETag::new(head.position, minute))
    };
    let build = async {
        let tag = tag().await?;
        let series = app
            .readers
            .run(move |conn| activity::get(conn, now).boxed())
            .await?;
        Ok((tag, series))
    };
    app.pages.answer(actor, &held, tag(), build).await
}
