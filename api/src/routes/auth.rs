//! Signing up and signing in: `POST /auth/register` and `POST /auth/login`,
//! the routes under `/api/v1` that need no token.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use commands::{Metadata, NewAccount};
use domain::user::{User, UserCommand};
use domain::values::{Actor, Email, Password, PersonName, Phone, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::command::{Accepted, Answer, Fields, OpenRequest};
use crate::error::ApiError;
use crate::openapi;
use crate::passwords;
use crate::AppState;

/// How long an access token from signing in is valid.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// The sign-up and sign-in routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
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
    let OpenRequest { request_id, body } = request;
    let mut fields = Fields::default();
    let email = fields.parse("email", body.email, Email::parse);
    let password = fields.parse("password", body.password, Password::parse);
    let name = fields.parse("name", body.name, PersonName::parse);
    let phone = fields.optional(body.phone, Phone::parse);
    let (((email, password), name), phone) =
        fields.finish(email.zip(password).zip(name).zip(phone))?;
    let user_id = Uuid::now_v7();
    let account = NewAccount {
        user_id,
        email: email.to_string(),
        password_hash: passwords::hash(password).await?,
        name: name.to_string(),
        phone: phone.map(String::from),
    };
    let profile = Profile {
        email: account.email.clone(),
        name: account.name.clone(),
        phone: account.phone.clone(),
        role: Role::Patient,
    };
    let metadata = Metadata::for_request(Actor::new(user_id, Role::Patient), request_id);
    let command = UserCommand::Register {
        user_id,
        at: Utc::now(),
    };
    let committed = app.write.open_account(command, &metadata, account).await?;
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

/// An account's row, as signing in reads it.
#[derive(sqlx::FromRow)]
struct AccountRow {
    user_id: Uuid,
    email: String,
    name: String,
    phone: Option<String>,
    password_hash: String,
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
    let account: Option<AccountRow> = sqlx::query_as(
        "SELECT user_id, email, name, phone, password_hash FROM accounts
          WHERE lower(email) = lower($1)",
    )
    .bind(email.trim())
    .fetch_optional(app.write.pool())
    .await?;
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let refused = ApiError::Unauthorized("the e-mail address or the password is not right");
    if !passwords::matches(password, stored).await? {
        tracing::info!("sign-in refused");
        return Err(refused);
    }
    let Some(account) = account else {
        return Err(refused);
    };
    let role = app
        .write
        .load::<User>(account.user_id)
        .await?
        .role()
        .ok_or(refused)?;
    tracing::info!(user_id = %account.user_id, %role, "signed in");
    Ok(Json(SignedIn {
        access_token: app.keys.mint(Actor::new(account.user_id, role), ACCESS_TTL),
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
    }))
}
