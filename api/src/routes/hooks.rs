//! Webhooks of notifications, for admins: register a URL for a kind of
//! notification, list them with how their deliveries went, remove one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use domain::access;
use domain::values::NotificationKind;
use domain::ValidationError;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::command::{CommandRequest, Fields, Path};
use crate::error::ApiError;
use crate::hooks::{self, Hook};
use crate::openapi;
use crate::AppState;

/// The longest URL a webhook may have.
const MAX_URL_LEN: usize = 2000;

/// The webhook routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(remove))
}

/// A URL to post notifications of one kind to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterHook {
    /// The kind of notification to post.
    #[schema(value_type = NotificationKind, required = true)]
    kind: Option<String>,
    /// An absolute `http` or `https` URL.
    #[schema(value_type = String, required = true, max_length = 2000, example = "https://push.example/herald")]
    url: Option<String>,
}

/// A registered webhook and the secret its deliveries are signed with,
/// which is shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredHook {
    /// The webhook.
    #[serde(flatten)]
    hook: Hook,
    /// The HMAC-SHA256 key of `X-Herald-Signature`.
    secret: String,
}

/// A webhook's URL, checked: at a public address unless the deployment
/// allows others.
fn hook_url(raw: String, private_addresses: bool) -> Result<url::Url, ValidationError> {
    let invalid = || ValidationError::new("url", "must be an absolute http or https URL");
    if raw.len() > MAX_URL_LEN {
        return Err(ValidationError::new(
            "url",
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = url::Url::parse(&raw).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid());
    }
    if let Some(refused) = (!private_addresses)
        .then(|| hooks::not_public(&url))
        .flatten()
    {
        return Err(ValidationError::new(
            "url",
            format!("must be at a public address: {refused}"),
        ));
    }
    Ok(url)
}

/// Registers a URL every notification of a kind is posted to, signed with
/// the secret in the answer.
#[utoipa::path(
    post,
    path = "/notification-webhooks",
    tag = "notifications",
    operation_id = "register_notification_webhook",
    request_body = RegisterHook,
    responses(
        (status = 201, description = "Registered", body = RegisteredHook),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn register(
    State(app): State<AppState>,
    request: CommandRequest<RegisterHook>,
) -> Result<(StatusCode, Json<RegisteredHook>), ApiError> {
    let CommandRequest { actor, body, .. } = request;
    access::may_manage_integrations(actor)?;
    let mut fields = Fields::default();
    let kind = fields
        .required("kind", body.kind)
        .and_then(|kind| fields.check(kind.parse::<NotificationKind>()));
    let url = fields
        .required("url", body.url)
        .and_then(|url| fields.check(hook_url(url, app.notify.webhook_private_addresses)));
    let (kind, url) = fields.finish(kind.zip(url))?;
    let (hook, secret) = hooks::register(app.write.pool(), kind, &url, actor.user_id).await?;
    Ok((StatusCode::CREATED, Json(RegisteredHook { hook, secret })))
}

/// The registered webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookList {
    /// Every webhook, oldest first, with how its deliveries went.
    items: Vec<Hook>,
}

/// Every registered webhook, with its last delivery's status.
#[utoipa::path(
    get,
    path = "/notification-webhooks",
    tag = "notifications",
    operation_id = "list_notification_webhooks",
    responses(
        (status = 200, description = "The webhooks", body = HookList),
        (status = 403, response = openapi::Forbidden),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list(
    State(app): State<AppState>,
    Caller(actor): Caller,
) -> Result<Json<HookList>, ApiError> {
    access::may_manage_integrations(actor)?;
    let items = app.readers.run(|conn| hooks::list(conn).boxed()).await?;
    Ok(Json(HookList { items }))
}

/// Removes a webhook: nothing more is posted to it.
#[utoipa::path(
    delete,
    path = "/notification-webhooks/{id}",
    tag = "notifications",
    operation_id = "remove_notification_webhook",
    params(("id" = Uuid, Path, description = "The webhook")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn remove(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    access::may_manage_integrations(actor)?;
    if hooks::remove(app.write.pool(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no webhook with that id"))
    }
}
