//! Every error answer is an RFC 9457 problem document.
//!
//! Client errors name what was wrong; infrastructure errors are logged with the
//! request id and answered with an opaque text that carries that id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use domain::{DomainError, ErrorKind, ValidationError};
use serde::Serialize;

use crate::request_id;

/// Seconds a client is asked to wait when a dependency is down.
const RETRY_AFTER_SECS: &str = "1";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: not JSON, wrong content type, unknown field, wrong JSON type.
    #[error("{0}")]
    BadRequest(String),
    /// No valid token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such resource, or not one the caller may see.
    #[error("{0}")]
    NotFound(&'static str),
    /// The endpoint exists but not with this method.
    #[error("this endpoint does not accept this method")]
    MethodNotAllowed,
    /// What the request would change is already settled.
    #[error("{0}")]
    Conflict(&'static str),
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Well-formed input with invalid values.
    #[error("the request has invalid values")]
    Invalid(Vec<ValidationError>),
    /// The command did not go through.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The payment provider did not do what the request needs.
    #[error(transparent)]
    PaymentProvider(#[from] commands::gateway::GatewayError),
    /// The request's headers are larger than the limit.
    #[error("the request's headers are larger than {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client paused sending the body for longer than the limit.
    #[error("the request body did not arrive in time")]
    BodyTimedOut,
    /// The caller already holds as many live sockets as one user may.
    #[error("at most {limit} live connections per user are allowed; close one first")]
    TooManyConnections {
        /// Sockets one user may hold.
        limit: usize,
    },
    /// The caller or its address sent too much too fast.
    #[error("too many requests; slow down")]
    RateLimited {
        /// How long until a request would be let through.
        retry_after: std::time::Duration,
    },
    /// The projections a read needs did not apply the awaited command in time.
    #[error("the read model has not caught up with the command yet; try again")]
    NotYetConsistent,
}

/// An RFC 9457 problem document: the body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "https://herald.dev/problems/not-found")]
    kind: String,
    /// The status's reason phrase.
    #[schema(example = "Not Found")]
    title: &'static str,
    /// The HTTP status code, repeated for clients that lose it.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong, for people; opaque for server errors.
    detail: String,
    /// Each invalid field of a 422; absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    /// The request's id (also in `X-Request-Id`), to quote when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

/// One invalid field of a request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's name (a dotted path for nested fields).
    field: String,
    /// What is wrong with its value.
    message: String,
}

/// A failure of the store a read went to: 503 while Postgres is away, an
/// opaque 500 otherwise.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::Command(CommandError::from(err))
    }
}

/// A payment that could not be started: refused, unstored, or not opened by
/// the provider.
impl From<commands::payments::StartPaymentError> for ApiError {
    fn from(err: commands::payments::StartPaymentError) -> Self {
        match err {
            commands::payments::StartPaymentError::Command(err) => Self::Command(err),
            commands::payments::StartPaymentError::Provider(err) => Self::PaymentProvider(err),
        }
    }
}

/// A read the caller's role may never make.
impl From<domain::Permission> for ApiError {
    fn from(permission: domain::Permission) -> Self {
        Self::Command(CommandError::Rejected(permission.into()))
    }
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } | Self::TooManyConnections { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimedOut => StatusCode::REQUEST_TIMEOUT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Command(CommandError::Rejected(rejected)) => match rejected.kind() {
                ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::Forbidden => StatusCode::FORBIDDEN,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Conflict => StatusCode::CONFLICT,
            },
            Self::Command(CommandError::Conflict | CommandError::IdempotencyKeyReused) => {
                StatusCode::CONFLICT
            }
            Self::Command(CommandError::Unavailable(_)) | Self::NotYetConsistent => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Command(CommandError::Internal(err)) if is_unstorable_text(err.as_ref()) => {
                StatusCode::BAD_REQUEST
            }
            Self::Command(CommandError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::PaymentProvider(err) if err.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            Self::PaymentProvider(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn field_errors(&self) -> Vec<FieldError> {
        let from = |e: &ValidationError| FieldError {
            field: e.field.clone(),
            message: e.message.clone(),
        };
        match self {
            Self::Invalid(errors) => errors.iter().map(from).collect(),
            Self::Command(CommandError::Rejected(rejected)) => {
                rejected.validation().map(from).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Command(CommandError::Unavailable(_)) => {
                "the database is unavailable; nothing was stored, try again shortly".to_owned()
            }
            Self::Command(CommandError::Internal(err)) if is_unstorable_text(err.as_ref()) => {
                "the request holds the NUL character (U+0000), which Herald cannot store".to_owned()
            }
            Self::Command(CommandError::Internal(_)) => {
                "an internal error occurred; quote the request id when reporting it".to_owned()
            }
            Self::Command(CommandError::Rejected(DomainError::Invalid(error))) => error.to_string(),
            Self::PaymentProvider(err) if err.is_transient() => {
                "the payment provider is unavailable; nothing was stored, try again shortly"
                    .to_owned()
            }
            Self::PaymentProvider(_) => {
                "the payment provider refused the request; quote the request id when reporting it"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Whether a store error is Postgres refusing text it cannot hold: the NUL
/// character, which neither `text` nor `jsonb` accepts (SQLSTATE 22P05 in JSON,
/// 22021 in a text parameter). The request carried it, so it is the client's
/// error, wherever in the request it was.
fn is_unstorable_text(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        commands::database_error(err),
        Some(sqlx::Error::Database(db)) if db.code().is_some_and(|code| code == "22P05" || code == "22021")
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let request_id = request_id::current();
        match &self {
            Self::Command(CommandError::Internal(err)) if status.is_server_error() => {
                tracing::error!(request_id, error = %err, source = ?err, "request failed");
            }
            Self::Command(CommandError::Unavailable(err)) => {
                tracing::warn!(request_id, error = %err, "a dependency is unavailable");
            }
            Self::PaymentProvider(err) => {
                tracing::warn!(request_id, error = %err, source = ?err, "the payment provider failed");
            }
            _ => {}
        }
        let problem = Problem {
            kind: format!(
                "https://herald.dev/problems/{}",
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "-")
            ),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            errors: self.field_errors(),
            request_id,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §15.5.2: a 401 names the scheme the client must use.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="herald""#),
            );
        }
        if let Self::RateLimited { retry_after } = &self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs() + 1),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
