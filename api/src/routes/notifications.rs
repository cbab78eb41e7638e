//! Notifications: the caller's feed, its read marker, and their settings.
//!
//! What is worth a notification is decided by the `notifications`
//! projection from the log; these routes read its read model and issue the
//! caller's own User commands (`NotificationsRead`,
//! `NotificationSettingsChanged`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use domain::user::{NotificationSettings, User, UserCommand};
use domain::values::{Actor, NotificationKind};
use domain::ValidationError;
use futures::FutureExt;
use projections::notifications::{self, NotificationRow, Reader};
use projections::Projection;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::command::{Accepted, Answer, CommandRequest, Fields};
use crate::conditional::{ETag, IfNoneMatch, Read};
use crate::consistency::{self, Consistency};
use crate::error::ApiError;
use crate::openapi::{self, ConditionalParams, ConsistencyParams};
use crate::routes::reads::{next_page, page_limit, positive, Query, DEFAULT_LIMIT};
use crate::AppState;

/// Chats one request may mute or unmute.
const MAX_MUTED_PER_REQUEST: usize = 100;

/// The notification routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .routes(routes!(read_notifications))
        .routes(routes!(settings, change_settings))
}

/// Who reads the caller's feed, as the reads are configured.
pub(crate) fn reader(app: &AppState, actor: Actor) -> Reader {
    Reader {
        user_id: actor.user_id,
        in_audience: app.notify.new_bookings_audience.contains(&actor.role),
    }
}

/// Whether `actor` hears of new bookings: their role is one the
/// notifications of new bookings go to, and they have not switched them off.
pub(crate) async fn hears_new_bookings(app: &AppState, actor: Actor) -> Result<bool, ApiError> {
    if !reader(app, actor).in_audience {
        return Ok(false);
    }
    let settings = app
        .readers
        .run(|conn| notifications::settings(conn, actor.user_id).boxed())
        .await?;
    Ok(settings.feed_on(NotificationKind::BookingRequested))
}

/// Keyset paging of the feed. Read as text so that a bad value is a 422
/// naming its parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FeedQuery {
    /// `true` for unread notifications only.
    #[param(value_type = Option<bool>)]
    unread: Option<String>,
    /// Only notifications before this one (the previous page's `next_cursor`).
    #[param(value_type = Option<i64>, minimum = 1)]
    cursor: Option<String>,
    /// Notifications per page, 1 to 200; 50 when absent.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// A page of the caller's notifications, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    /// The notifications.
    items: Vec<NotificationRow>,
    /// The `cursor` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<i64>,
}

/// The caller's notifications, newest first: what happened to their
/// bookings and payments, messages they left unread, and, for the roles
/// configured, new bookings waiting for a doctor.
#[utoipa::path(
    get,
    path = "/notifications",
    tag = "notifications",
    operation_id = "list_notifications",
    params(FeedQuery, ConsistencyParams, ConditionalParams),
    responses(
        (status = 200, description = "A page of the caller's notifications", body = NotificationPage),
        (status = 304, response = openapi::NotModified),
        (status = 400, response = openapi::BadRequest),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list_notifications(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
    Query(query): Query<FeedQuery>,
    held: IfNoneMatch,
) -> Result<Read<NotificationPage>, ApiError> {
    let mut fields = Fields::default();
    let unread = fields
        .optional(query.unread, |raw| match raw.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ValidationError::new("unread", "must be true or false")),
        })
        .map(|unread| unread.unwrap_or(false));
    let cursor = fields.optional(query.cursor, |raw| positive("cursor", &raw));
    let limit = fields
        .optional(query.limit, page_limit)
        .map(|limit| limit.unwrap_or(DEFAULT_LIMIT));
    let ((unread, cursor), limit) = fields.finish(unread.zip(cursor).zip(limit))?;
    consistency::wait(&app, &consistency, &[Projection::Notifications]).await?;
    // The feed and its read marker are one read model, so its checkpoint
    // covers both.
    let position = app
        .readers
        .run(|conn| projections::checkpoint(conn, Projection::Notifications).boxed())
        .await?;
    let reader = reader(&app, actor);
    let tag = ETag::new(position, (actor, reader.in_audience, unread, cursor, limit));
    if held.matches(&tag) {
        return Ok(Read::NotModified(tag));
    }
    let mut items = app
        .readers
        .run(|conn| notifications::feed(conn, reader, cursor, unread, limit + 1).boxed())
        .await?;
    let next_cursor = next_page(&mut items, limit, |last| last.seq);
    Ok(Read::Full(tag, NotificationPage { items, next_cursor }))
}

/// How far the caller has read their notifications.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReadNotifications {
    /// The `seq` of the newest notification read; it and every older one
    /// count as read.
    #[schema(value_type = i64, required = true, minimum = 1)]
    up_to: Option<i64>,
}

/// Marks the caller's notifications read up to one (NotificationsRead); a
/// marker already there or beyond stays, and one past every notification
/// there is stops at the newest.
#[utoipa::path(
    post,
    path = "/notifications/read",
    tag = "notifications",
    operation_id = "read_notifications",
    request_body = ReadNotifications,
    responses(
        (status = 200, description = "The marker moved, or was there already", body = Accepted),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NoAccount),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn read_notifications(
    State(app): State<AppState>,
    request: CommandRequest<ReadNotifications>,
) -> Result<Answer<Accepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let up_to = fields.required("up_to", body.up_to).and_then(|up_to| {
        fields.check(if up_to >= 1 {
            Ok(up_to)
        } else {
            Err(ValidationError::new(
                "up_to",
                "must be a notification's seq",
            ))
        })
    });
    let command = fields.finish(up_to.map(|up_to| UserCommand::ReadNotifications {
        actor,
        up_to,
        at: Utc::now(),
    }))?;
    let committed = app
        .write
        .execute::<User>(actor.user_id, command, &metadata)
        .await?;
    Ok(Answer::ok(&committed, Accepted::of(&committed)))
}

/// The caller's notification settings: every kind with whether it is shown
/// in the app and sent by e-mail, and the chats they muted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Settings {
    /// Shown in the app, by kind.
    #[schema(value_type = BTreeMap<String, bool>)]
    feed: BTreeMap<NotificationKind, bool>,
    /// Sent by e-mail (when Herald sends e-mail), by kind.
    #[schema(value_type = BTreeMap<String, bool>)]
    email: BTreeMap<NotificationKind, bool>,
    /// Chats that notify of nothing.
    muted_chats: Vec<Uuid>,
}

impl From<NotificationSettings> for Settings {
    fn from(settings: NotificationSettings) -> Self {
        let every = |on: &dyn Fn(NotificationKind) -> bool| {
            (NotificationKind::ALL.iter())
                .map(|kind| (*kind, on(*kind)))
                .collect()
        };
        Self {
            feed: every(&|kind| settings.feed_on(kind)),
            email: every(&|kind| settings.email_on(kind)),
            muted_chats: settings.muted_chats.keys().copied().collect(),
        }
    }
}

/// The caller's notification settings.
#[utoipa::path(
    get,
    path = "/me/notifications",
    tag = "notifications",
    operation_id = "notification_settings",
    params(ConsistencyParams),
    responses(
        (status = 200, description = "The caller's settings", body = Settings),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn settings(
    State(app): State<AppState>,
    Caller(actor): Caller,
    consistency: Consistency,
) -> Result<Json<Settings>, ApiError> {
    consistency::wait(&app, &consistency, &[Projection::Notifications]).await?;
    let settings = app
        .readers
        .run(|conn| notifications::settings(conn, actor.user_id).boxed())
        .await?;
    Ok(Json(settings.into()))
}

/// Switches of the caller's notifications; what is left out stays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeSettings {
    /// Kinds to show in the app (`true`) or not (`false`).
    #[schema(value_type = Option<BTreeMap<String, bool>>)]
    feed: Option<BTreeMap<String, bool>>,
    /// Kinds to send by e-mail (`true`) or not (`false`).
    #[schema(value_type = Option<BTreeMap<String, bool>>)]
    email: Option<BTreeMap<String, bool>>,
    /// Chats to mute (`true`) or unmute (`false`), by id; at most 100 at once.
    #[schema(value_type = Option<BTreeMap<String, bool>>)]
    muted_chats: Option<BTreeMap<String, bool>>,
}

/// Kinds named by their names, each checked.
fn kinds(
    field: &'static str,
    switches: Option<BTreeMap<String, bool>>,
) -> Result<BTreeMap<NotificationKind, bool>, ValidationError> {
    (switches.unwrap_or_default().into_iter())
        .map(|(name, on)| {
            let kind = name
                .parse::<NotificationKind>()
                .map_err(|err| ValidationError::new(format!("{field}.{name}"), err.message))?;
            Ok((kind, on))
        })
        .collect()
}

/// Chats named by their ids, each checked.
fn chats(
    switches: Option<BTreeMap<String, bool>>,
) -> Result<BTreeMap<Uuid, bool>, ValidationError> {
    let switches = switches.unwrap_or_default();
    if switches.len() > MAX_MUTED_PER_REQUEST {
        return Err(ValidationError::new(
            "muted_chats",
            format!("at most {MAX_MUTED_PER_REQUEST} chats at once"),
        ));
    }
    (switches.into_iter())
        .map(|(id, muted)| {
            let chat = Uuid::parse_str(&id).map_err(|_| {
                ValidationError::new(format!("muted_chats.{id}"), "must be a chat id")
            })?;
            Ok((chat, muted))
        })
        .collect()
}

/// Changes the caller's notification settings
/// (NotificationSettingsChanged, naming only what changed).
#[utoipa::path(
    patch,
    path = "/me/notifications",
    tag = "notifications",
    operation_id = "change_notification_settings",
    request_body = ChangeSettings,
    responses(
        (status = 200, description = "Changed, or nothing to change", body = Accepted),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NoAccount),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn change_settings(
    State(app): State<AppState>,
    request: CommandRequest<ChangeSettings>,
) -> Result<Answer<Accepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let feed = fields.check(kinds("feed", body.feed));
    let email = fields.check(kinds("email", body.email));
    let muted_chats = fields.check(chats(body.muted_chats));
    let changes = fields.finish(feed.zip(email).zip(muted_chats).map(
        |((feed, email), muted_chats)| NotificationSettings {
            feed,
            email,
            muted_chats,
        },
    ))?;
    let command = UserCommand::ChangeNotificationSettings {
        actor,
        changes,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<User>(actor.user_id, command, &metadata)
        .await?;
    Ok(Answer::ok(&committed, Accepted::of(&committed)))
}
