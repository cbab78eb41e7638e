//! Administration of users: admins open accounts for doctors, admins and
//! auditors, list users, change roles, and deactivate and reactivate.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use commands::accounts::{self, AccountWrite, ListedUser, UserFilter};
use commands::{Committed, Metadata};
use domain::access;
use domain::user::{User, UserCommand};
use domain::values::{Email, PersonName, Phone, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::command::{Accepted, Answer, CommandRequest, Fields, Path};
use crate::error::ApiError;
use crate::openapi;
use crate::passwords;
use crate::routes::chats::NoBody;
use crate::routes::reads::{next_page, page_limit, Query, DEFAULT_LIMIT};
use crate::sessions;
use crate::AppState;

/// The user administration routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(change_role))
        .routes(routes!(deactivate))
        .routes(routes!(reactivate))
}

/// A role as a person can hold it.
fn role(raw: String) -> Result<Role, domain::ValidationError> {
    raw.parse::<Role>()
}

/// An account an admin opens.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    /// The address they will sign in with.
    #[schema(value_type = String, required = true, format = Email)]
    email: Option<String>,
    /// What to call them.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// `+` and 7 to 15 digits.
    #[schema(value_type = Option<String>)]
    phone: Option<String>,
    /// `doctor`, `admin`, `auditor` or `patient`.
    #[schema(value_type = String, required = true, example = "doctor")]
    role: Option<String>,
}

/// The answer to opening an account: the user, and the one-time token with
/// which they set their password (pass it on to them; it is not shown again).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserCreated {
    /// The user's id, version and consistency token.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The address they sign in with.
    pub email: String,
    /// The role they act in.
    #[schema(value_type = String)]
    pub role: Role,
    /// For `POST /auth/set-password`, once.
    pub set_password_token: String,
    /// When the token stops working.
    pub set_password_expires_at: DateTime<Utc>,
}

/// An admin opens an account for a doctor, an admin, an auditor or a patient.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    operation_id = "create_user",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Opened (UserCreated); the user sets a password with the token", body = UserCreated),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn create(
    State(app): State<AppState>,
    request: CommandRequest<CreateUser>,
) -> Result<Answer<UserCreated>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let email = fields.parse("email", body.email, Email::parse);
    let name = fields.parse("name", body.name, PersonName::parse);
    let phone = fields.optional(body.phone, Phone::parse);
    let role = fields.parse("role", body.role, role);
    let (((email, name), phone), role) = fields.finish(email.zip(name).zip(phone).zip(role))?;
    let user_id = Uuid::now_v7();
    let (set_password_token, setup_hash) = sessions::mint();
    let account = AccountWrite::Open {
        user_id,
        email: email.to_string(),
        password_hash: passwords::NOT_SET.to_owned(),
        name: name.to_string(),
        phone: phone.map(String::from),
        password_setup: Some(setup_hash),
    };
    let command = UserCommand::Create {
        user_id,
        role,
        actor,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute_on_account(command, &metadata, account)
        .await?;
    let expires = chrono::Duration::from_std(accounts::PASSWORD_SETUP_TTL).unwrap_or_default();
    Ok(Answer::created(
        &committed,
        UserCreated {
            accepted: Accepted::of(&committed),
            email: email.to_string(),
            role,
            set_password_token,
            set_password_expires_at: Utc::now() + expires,
        },
    ))
}

/// Filtering and paging of users, read as text so that a bad value is a 422
/// naming its parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsersQuery {
    /// Only users of this role.
    #[param(value_type = Option<String>, example = "doctor")]
    role: Option<String>,
    /// Only users whose address or name holds this, whatever its case.
    #[param(value_type = Option<String>)]
    q: Option<String>,
    /// Users per page, 1 to 200; 50 when absent.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<String>)]
    cursor: Option<String>,
}

/// A page of users; `next_cursor` is `null` on the last page.
#[derive(Debug, Serialize, ToSchema)]
struct UserPage {
    /// The users, by id.
    items: Vec<ListedUser>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<Uuid>,
}

/// Users with accounts, for admins.
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    operation_id = "list_users",
    params(UsersQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn list(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<UsersQuery>,
) -> Result<Json<UserPage>, ApiError> {
    access::may_manage_users(actor)?;
    let mut fields = Fields::default();
    let role = fields.optional(query.role, role);
    let search = fields.optional(query.q, |q| {
        let q = q.trim().to_owned();
        if (1..=100).contains(&q.chars().count()) {
            Ok(q)
        } else {
            Err(domain::ValidationError::new(
                "q",
                "must be 1 to 100 characters",
            ))
        }
    });
    let limit = fields
        .optional(query.limit, page_limit)
        .map(|limit| limit.unwrap_or(DEFAULT_LIMIT));
    let cursor = fields.optional(query.cursor, |raw| {
        raw.parse::<Uuid>()
            .map_err(|_| domain::ValidationError::new("cursor", "must be a page's next_cursor"))
    });
    let (((role, search), limit), cursor) =
        fields.finish(role.zip(search).zip(limit).zip(cursor))?;
    let filter = UserFilter {
        role: role.map(|role| role.as_str().to_owned()),
        search,
    };
    let mut items = accounts::list(app.write.pool(), &filter, cursor, limit + 1).await?;
    let next_cursor = next_page(&mut items, limit, |last| last.id);
    Ok(Json(UserPage { items, next_cursor }))
}

/// The answer to a command on a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserChanged {
    /// The user's id, version and consistency token.
    #[serde(flatten)]
    pub accepted: Accepted,
}

/// Runs an admin's `command` on user `id`.
async fn administer(
    app: &AppState,
    id: Uuid,
    command: UserCommand,
    metadata: &Metadata,
) -> Result<Answer<UserChanged>, ApiError> {
    let committed: Committed<User> = app.write.execute(id, command, metadata).await?;
    // This process refuses the user's old tokens at once; the others within
    // their next reload.
    app.keys.revocations().reload(app.write.pool()).await?;
    Ok(Answer::ok(
        &committed,
        UserChanged {
            accepted: Accepted::of(&committed),
        },
    ))
}

/// A new role.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeRole {
    /// `patient`, `doctor`, `admin` or `auditor`.
    #[schema(value_type = String, required = true, example = "doctor")]
    role: Option<String>,
}

/// An admin gives another user a new role (RoleChanged). Tokens issued
/// before it stop working; the user signs in again.
#[utoipa::path(
    post,
    path = "/users/{id}/role",
    tag = "users",
    operation_id = "change_user_role",
    params(("id" = Uuid, Path, description = "The user")),
    request_body = ChangeRole,
    responses(
        (status = 200, description = "Changed, or already that role", body = UserChanged),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn change_role(
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
    request: CommandRequest<ChangeRole>,
) -> Result<Answer<UserChanged>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let new = fields.parse("role", body.role, role);
    let role = fields.finish(new)?;
    let command = UserCommand::ChangeRole {
        role,
        actor,
        at: Utc::now(),
    };
    administer(&app, id, command, &metadata).await
}

/// An admin stops another user from signing in (UserDeactivated): their
/// sessions end with it, and their tokens stop working on every Herald
/// process as soon as it is announced.
#[utoipa::path(
    post,
    path = "/users/{id}/deactivate",
    tag = "users",
    operation_id = "deactivate_user",
    params(("id" = Uuid, Path, description = "The user")),
    responses(
        (status = 200, description = "Deactivated, or already", body = UserChanged),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn deactivate(
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
    request: CommandRequest<NoBody>,
) -> Result<Answer<UserChanged>, ApiError> {
    let command = UserCommand::Deactivate {
        actor: request.actor,
        at: Utc::now(),
    };
    administer(&app, id, command, &request.metadata).await
}

/// An admin lets a deactivated user sign in again (UserReactivated).
#[utoipa::path(
    post,
    path = "/users/{id}/reactivate",
    tag = "users",
    operation_id = "reactivate_user",
    params(("id" = Uuid, Path, description = "The user")),
    responses(
        (status = 200, description = "Reactivated, or already active", body = UserChanged),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn reactivate(
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
    request: CommandRequest<NoBody>,
) -> Result<Answer<UserChanged>, ApiError> {
    let command = UserCommand::Reactivate {
        actor: request.actor,
        at: Utc::now(),
    };
    administer(&app, id, command, &request.metadata).await
}
