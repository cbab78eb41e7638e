//! Accounts: signing up, in and out, refreshing the access token, and the
//! caller's own account (`/me`). Signing up, in and out and refreshing are
//! the routes under `/api/v1` that need no access token.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use commands::accounts::{self, AccountWrite};
use commands::Metadata;
use domain::user::{User, UserCommand};
use domain::values::{Actor, Bio, Email, Password, PersonName, Phone, Role, Specialty};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::command::{Accepted, Answer, CommandRequest, Fields, OpenRequest};
use crate::error::ApiError;
use crate::openapi;
use crate::passwords;
use crate::sessions;
use crate::AppState;

/// How long an access token from signing in is valid.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// The sign-up and sign-in routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(set_password))
        .routes(routes!(me, change_profile))
        .routes(routes!(change_password))
}

/// Someone signing up. Fields are read as optional so that a missing one is
/// a 422 naming it; the contract requires `email`, `password` and `name`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Register {
    /// The address to sign in with; one account per address, whatever its case.
    #[schema(value_type = String, required = true, format = Email, example = "anna@example.com")]
    email: Option<String>,
    /// 8 to 128 characters, not one of the most common passwords.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128, format = Password)]
    password: Option<String>,
    /// What to call them; not blank.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// `+` and 7 to 15 digits; spaces, dashes and brackets are allowed between them.
    #[schema(value_type = Option<String>, example = "+7 916 123-45-67")]
    phone: Option<String>,
}

/// A person's account, as they see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    /// The address they sign in with.
    pub email: String,
    /// Their name.
    pub name: String,
    /// Their phone, if they gave one.
    pub phone: Option<String>,
    /// The role they act in.
    #[schema(value_type = String, example = "patient")]
    pub role: Role,
}

/// The answer to signing up: the new user and their account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The user's id, version and consistency token.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The account.
    #[serde(flatten)]
    pub profile: Profile,
}

/// Someone signs up as a patient.
#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "accounts",
    operation_id = "register",
    security(()),
    request_body = Register,
    responses(
        (status = 201, description = "The account was opened (UserRegistered); sign in next", body = Registered),
        (status = 400, response = openapi::BadRequest),
        (status = 409, description = "An account with this e-mail address already exists", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn register(
    State(app): State<AppState>,
    request: OpenRequest<Register>,
) -> Result<Answer<Registered>, ApiError> {
    let OpenRequest {
        request_id, body, ..
    } = request;
    let mut fields = Fields::default();
    let email = fields.parse("email", body.email, Email::parse);
    let password = fields.parse("password", body.password, Password::parse);
    let name = fields.parse("name", body.name, PersonName::parse);
    let phone = fields.optional(body.phone, Phone::parse);
    let (((email, password), name), phone) =
        fields.finish(email.zip(password).zip(name).zip(phone))?;
    let user_id = Uuid::now_v7();
    let profile = Profile {
        email: email.to_string(),
        name: name.to_string(),
        phone: phone.map(String::from),
        role: Role::Patient,
    };
    let account = AccountWrite::Open {
        user_id,
        email: profile.email.clone(),
        password_hash: passwords::hash(password).await?,
        name: profile.name.clone(),
        phone: profile.phone.clone(),
        password_setup: None,
    };
    let metadata = Metadata::for_request(Actor::new(user_id, Role::Patient), request_id);
    let command = UserCommand::Register {
        user_id,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute_on_account(command, &metadata, account)
        .await?;
    Ok(Answer::created(
        &committed,
        Registered {
            accepted: Accepted::of(&committed),
            profile,
        },
    ))
}

/// Someone signing in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    /// The address they signed up with, in any case.
    #[schema(value_type = String, required = true, format = Email)]
    email: Option<String>,
    /// Their password.
    #[schema(value_type = String, required = true, format = Password)]
    password: Option<String>,
}

/// The answer to signing in.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedIn {
    /// A bearer token for every other route.
    pub access_token: String,
    /// Trades for a new pair at `POST /auth/refresh`, once; valid for 30 days.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Who signed in.
    pub user: SignedInUser,
}

/// Who signed in.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedInUser {
    /// Their user id, the token's `sub`.
    pub id: Uuid,
    /// Their account.
    #[serde(flatten)]
    pub profile: Profile,
}

/// Someone signs in with their e-mail address and password.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "accounts",
    operation_id = "login",
    security(()),
    request_body = Login,
    responses(
        (status = 200, description = "Signed in", body = SignedIn),
        (status = 400, response = openapi::BadRequest),
        (status = 401, description = "No account has this address and password; which of the two is wrong is not said", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn login(
    State(app): State<AppState>,
    request: OpenRequest<Login>,
) -> Result<Json<SignedIn>, ApiError> {
    let mut fields = Fields::default();
    let email = fields.required("email", request.body.email);
    let password = fields.required("password", request.body.password);
    let (email, password) = fields.finish(email.zip(password))?;
    if let Some(retry_after) = app.sign_ins.wait(&email, request.address) {
        return Err(ApiError::RateLimited { retry_after });
    }
    let account = accounts::by_email(app.write.pool(), &email).await?;
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    if !passwords::matches(password, stored).await? {
        app.sign_ins.failed(&email, request.address);
        tracing::info!(address = %request.address, "sign-in refused");
        return Err(wrong_credentials());
    }
    app.sign_ins.succeeded(&email);
    let account = account.ok_or_else(wrong_credentials)?;
    let refresh_token = sessions::start(app.write.pool(), account.user_id).await?;
    let signed_in = signed_in(&app, account, refresh_token).await?;
    tracing::info!(user_id = %signed_in.user.id, role = %signed_in.user.profile.role, "signed in");
    Ok(Json(signed_in))
}

fn wrong_credentials() -> ApiError {
    ApiError::Unauthorized("the e-mail address or the password is not right")
}

/// The answer that signs `account` in with `refresh_token`: a new access
/// token in the role the log gives the user.
async fn signed_in(
    app: &AppState,
    account: accounts::Account,
    refresh_token: String,
) -> Result<SignedIn, ApiError> {
    let user = app.write.load::<User>(account.user_id).await?;
    let role = user
        .role()
        .ok_or(ApiError::Unauthorized("the account has no user"))?;
    if !user.is_active() {
        return Err(ApiError::Forbidden("the account is deactivated"));
    }
    Ok(SignedIn {
        access_token: app.keys.mint(Actor::new(account.user_id, role), ACCESS_TTL),
        refresh_token,
        token_type: "Bearer",
        expires_in: ACCESS_TTL.as_secs(),
        user: SignedInUser {
            id: account.user_id,
            profile: Profile {
                email: account.email,
                name: account.name,
                phone: account.phone,
                role,
            },
        },
    })
}

/// A refresh token presented.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshToken {
    /// The refresh token from signing in or the last refresh.
    #[schema(value_type = String, required = true)]
    refresh_token: Option<String>,
}

impl RefreshToken {
    fn required(self) -> Result<String, ApiError> {
        let mut fields = Fields::default();
        let token = fields.required("refresh_token", self.refresh_token);
        fields.finish(token)
    }
}

/// Trades a refresh token for a new access token and a new refresh token.
/// A refresh token works once: presented again, it ends its session.
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "accounts",
    operation_id = "refresh",
    security(()),
    request_body = RefreshToken,
    responses(
        (status = 200, description = "A new pair; the one presented is spent", body = SignedIn),
        (status = 400, response = openapi::BadRequest),
        (status = 401, description = "The refresh token is unknown, expired, revoked or already spent (which also ends its session)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn refresh(
    State(app): State<AppState>,
    request: OpenRequest<RefreshToken>,
) -> Result<Json<SignedIn>, ApiError> {
    let presented = request.body.required()?;
    let refused = || ApiError::Unauthorized("the refresh token is not valid");
    let (user_id, next) = sessions::rotate(app.write.pool(), &presented)
        .await?
        .ok_or_else(refused)?;
    let account = accounts::of_user(app.write.pool(), user_id)
        .await?
        .ok_or_else(refused)?;
    Ok(Json(signed_in(&app, account, next).await?))
}

/// Ends the session a refresh token belongs to: it and every token rotated
/// from the same sign-in stop working. Access tokens already issued expire
/// on their own.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "accounts",
    operation_id = "logout",
    security(()),
    request_body = RefreshToken,
    responses(
        (status = 204, description = "Signed out (also when the token was not valid)"),
        (status = 400, response = openapi::BadRequest),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn logout(
    State(app): State<AppState>,
    request: OpenRequest<RefreshToken>,
) -> Result<StatusCode, ApiError> {
    sessions::end(app.write.pool(), &request.body.required()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller as Herald knows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// Their user id, the token's `sub`.
    pub id: Uuid,
    /// The role the token gives them.
    #[schema(value_type = String, example = "patient")]
    pub role: Role,
    /// Their account's address; `null` for a service account, which has none.
    pub email: Option<String>,
    /// Their name; `null` without an account.
    pub name: Option<String>,
    /// Their phone, if they gave one.
    pub phone: Option<String>,
    /// A doctor's specialty, if they gave one.
    pub specialty: Option<String>,
    /// A doctor's short introduction, if they gave one.
    pub bio: Option<String>,
    /// How many of their notifications they have not read.
    pub unread_notifications: i64,
}

/// The caller's own account.
#[utoipa::path(
    get,
    path = "/me",
    tag = "accounts",
    operation_id = "me",
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn me(State(app): State<AppState>, Caller(actor): Caller) -> Result<Json<Me>, ApiError> {
    let account = accounts::of_user(app.write.pool(), actor.user_id).await?;
    let reader = crate::routes::notifications::reader(&app, actor);
    let unread_notifications = app
        .readers
        .run(|conn| projections::notifications::unread_count(conn, reader).boxed())
        .await?;
    let (email, name, phone, specialty, bio) = match account {
        Some(account) => (
            Some(account.email),
            Some(account.name),
            account.phone,
            account.specialty,
            account.bio,
        ),
        None => Default::default(),
    };
    Ok(Json(Me {
        id: actor.user_id,
        role: actor.role,
        email,
        name,
        phone,
        specialty,
        bio,
        unread_notifications,
    }))
}

/// What the caller changes of their profile; a field left out keeps its value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeProfile {
    /// A new name; not blank.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// A new phone (`+` and 7 to 15 digits), or `null` to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    phone: Option<Option<String>>,
    /// Doctors only: what they practise (up to 100 characters), or `null`
    /// to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 100)]
    specialty: Option<Option<String>>,
    /// Doctors only: a short introduction (up to 1000 characters), or `null`
    /// to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 1000)]
    bio: Option<Option<String>>,
}

/// A field that is present, even as `null`: `Some(None)` then.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// The caller changes their name or phone, and a doctor their specialty or
/// bio (ProfileChanged, naming the fields; the values go to their account,
/// not to the log).
#[utoipa::path(
    patch,
    path = "/me",
    tag = "accounts",
    operation_id = "change_profile",
    request_body = ChangeProfile,
    responses(
        (status = 200, description = "Changed, or nothing to change", body = Me),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NoAccount),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn change_profile(
    State(app): State<AppState>,
    request: CommandRequest<ChangeProfile>,
) -> Result<Json<Me>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let name = fields.optional(body.name, PersonName::parse);
    let phone = fields.optional(body.phone, |phone| phone.map(Phone::parse).transpose());
    let specialty = fields.optional(body.specialty, |s| s.map(Specialty::parse).transpose());
    let bio = fields.optional(body.bio, |bio| bio.map(Bio::parse).transpose());
    let (((name, phone), specialty), bio) =
        fields.finish(name.zip(phone).zip(specialty).zip(bio))?;
    // A caller without an account has no User either: the aggregate answers 404.
    let changed = [
        ("name", name.is_some()),
        ("phone", phone.is_some()),
        ("specialty", specialty.is_some()),
        ("bio", bio.is_some()),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(field, _)| field.to_owned())
    .collect();
    let write = AccountWrite::Profile {
        user_id: actor.user_id,
        name: name.map(String::from),
        phone: phone.map(|phone| phone.map(String::from)),
        specialty: specialty.map(|specialty| specialty.map(String::from)),
        bio: bio.map(|bio| bio.map(String::from)),
    };
    let command = UserCommand::ChangeProfile {
        actor,
        fields: changed,
        at: Utc::now(),
    };
    app.write
        .execute_on_account(command, &metadata, write)
        .await?;
    me(State(app), Caller(actor)).await
}

/// A new password, with the current one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    /// The password now.
    #[schema(value_type = String, required = true, format = Password)]
    current_password: Option<String>,
    /// 8 to 128 characters, not one of the most common passwords.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128, format = Password)]
    new_password: Option<String>,
}

/// The caller chooses a new password. Every other session of theirs ends;
/// the answer signs this one in afresh.
#[utoipa::path(
    post,
    path = "/me/password",
    tag = "accounts",
    operation_id = "change_password",
    request_body = ChangePassword,
    responses(
        (status = 200, description = "Changed (PasswordChanged); a new pair for this session", body = SignedIn),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NoAccount),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn change_password(
    State(app): State<AppState>,
    request: CommandRequest<ChangePassword>,
) -> Result<Json<SignedIn>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let current = fields.required("current_password", body.current_password);
    let new = fields.parse("new_password", body.new_password, |raw| {
        Password::parse(raw).map_err(|mut err| {
            err.field = "new_password".to_owned();
            err
        })
    });
    let (current, new) = fields.finish(current.zip(new))?;
    let account = accounts::of_user(app.write.pool(), actor.user_id)
        .await?
        .ok_or(ApiError::NotFound("the caller has no account"))?;
    if !passwords::matches(current, Some(account.password_hash.clone())).await? {
        return Err(ApiError::Invalid(vec![domain::ValidationError::new(
            "current_password",
            "is not right",
        )]));
    }
    let write = AccountWrite::Password {
        user_id: actor.user_id,
        password_hash: passwords::hash(new).await?,
    };
    let command = UserCommand::ChangePassword {
        actor,
        at: Utc::now(),
    };
    app.write
        .execute_on_account(command, &metadata, write)
        .await?;
    let refresh_token = sessions::start(app.write.pool(), actor.user_id).await?;
    tracing::info!(user_id = %actor.user_id, "password changed; other sessions ended");
    Ok(Json(signed_in(&app, account, refresh_token).await?))
}

/// A first password, with the one-time token an admin was given for it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    /// The `set_password_token` from creating the user.
    #[schema(value_type = String, required = true)]
    token: Option<String>,
    /// 8 to 128 characters, not one of the most common passwords.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128, format = Password)]
    password: Option<String>,
}

/// Someone an admin opened an account for sets its first password with the
/// one-time token from `POST /users`, then signs in.
#[utoipa::path(
    post,
    path = "/auth/set-password",
    tag = "accounts",
    operation_id = "set_password",
    security(()),
    request_body = SetPassword,
    responses(
        (status = 204, description = "Set (PasswordChanged); sign in with it"),
        (status = 400, response = openapi::BadRequest),
        (status = 401, description = "The token is unknown, expired or spent", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn set_password(
    State(app): State<AppState>,
    request: OpenRequest<SetPassword>,
) -> Result<StatusCode, ApiError> {
    let OpenRequest {
        request_id, body, ..
    } = request;
    let mut fields = Fields::default();
    let token = fields.required("token", body.token);
    let password = fields.parse("password", body.password, Password::parse);
    let (token, password) = fields.finish(token.zip(password))?;
    let user_id = sessions::password_setup_of(app.write.pool(), &token)
        .await?
        .ok_or(ApiError::Unauthorized("the token is not valid"))?;
    let role = app
        .write
        .load::<User>(user_id)
        .await?
        .role()
        .ok_or(ApiError::Unauthorized("the token is not valid"))?;
    let actor = Actor::new(user_id, role);
    let write = AccountWrite::Password {
        user_id,
        password_hash: passwords::hash(password).await?,
    };
    let command = UserCommand::ChangePassword {
        actor,
        at: Utc::now(),
    };
    app.write
        .execute_on_account(command, &Metadata::for_request(actor, request_id), write)
        .await?;
    sessions::spend_password_setup(app.write.pool(), &token).await?;
    Ok(StatusCode::NO_CONTENT)
}
