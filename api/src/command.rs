//! What every command endpoint shares: the authenticated caller, the request and
//! idempotency ids turned into event metadata, a strictly parsed JSON body, field
//! validation, and the `{ id, version, consistency }` answer every command's
//! own answer builds on.

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use commands::{request_hash, Committed, IdempotencyKey, Metadata};
use cqrs_es::Aggregate;
use domain::values::Actor;
use domain::ValidationError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::request_id::X_REQUEST_ID;
use crate::AppState;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A command request: who sends it, the metadata its events will carry, and its body.
pub struct CommandRequest<T> {
    /// The authenticated caller.
    pub actor: Actor,
    /// Metadata for the events the command produces.
    pub metadata: Metadata,
    /// The parsed body; an empty body reads as `{}`.
    pub body: T,
}

impl<S, T> FromRequest<S> for CommandRequest<T>
where
    AppState: FromRef<S>,
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Caller(actor) = Caller::from_request_parts(&mut parts, state).await?;
        let bytes = read_body(&parts.headers, body).await?;
        let body = parse_json(&parts.headers, &bytes)?;
        let request_id = request_id(&parts.headers);
        let idempotency = idempotency_key(&parts.headers)?.map(|key| IdempotencyKey {
            key,
            request_hash: request_hash(parts.method.as_str(), parts.uri.path(), &canonical(&bytes)),
        });
        Ok(Self {
            actor,
            metadata: Metadata::for_request(actor, request_id).with_idempotency(idempotency),
            body,
        })
    }
}

/// A request anyone may send, without a token (signing up, signing in): its
/// request id and its body, parsed as strictly as a command's.
pub struct OpenRequest<T> {
    /// The request id its events' metadata carries.
    pub request_id: String,
    /// The address it came from.
    pub address: std::net::IpAddr,
    /// The parsed body; an empty body reads as `{}`.
    pub body: T,
}

impl<S, T> FromRequest<S> for OpenRequest<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let bytes = read_body(&parts.headers, body).await?;
        Ok(Self {
            request_id: request_id(&parts.headers),
            address: crate::limits::caller_address(&parts.extensions),
            body: parse_json(&parts.headers, &bytes)?,
        })
    }
}

/// The request's `X-Request-Id` (the request id layer sets one on every
/// request), or a new id.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

/// A decoding error in the client's terms: serde names the Rust type it
/// wanted ("expected struct RequestBooking"), a client needs the JSON shape.
fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push_str("a JSON object");
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

/// Whether a body holds nothing but white space: it reads as `{}`.
fn is_empty(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// The body, or `{}` for an empty one.
fn or_empty_object(bytes: &[u8]) -> &[u8] {
    if is_empty(bytes) {
        b"{}"
    } else {
        bytes
    }
}

/// The body as the request it means rather than the bytes it was sent as:
/// JSON with its keys sorted and no insignificant white space, so that a retry
/// formatted another way is recognised as the same request. A body that is not
/// JSON stays as it is (the command refuses it anyway).
fn canonical(bytes: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(or_empty_object(bytes)) {
        Ok(mut value) => {
            value.sort_all_objects();
            value.to_string().into_bytes()
        }
        Err(_) => bytes.to_vec(),
    }
}

/// The body of a request, at most [`BODY_LIMIT`] bytes.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit: BODY_LIMIT };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT) {
        return Err(too_large);
    }
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|err| {
        let causes =
            std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |err| {
                err.source()
            });
        for cause in causes {
            if cause.is::<http_body_util::LengthLimitError>() {
                return too_large;
            }
            if cause.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::BodyTimedOut;
            }
        }
        ApiError::BadRequest("the request body could not be read".to_owned())
    })
}

fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        });
    if !is_json && !is_empty(bytes) {
        return Err(ApiError::BadRequest(
            "the body must be JSON, sent with Content-Type: application/json".to_owned(),
        ));
    }
    let bytes = or_empty_object(bytes);
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = without_type_names(&err.into_inner().to_string());
        ApiError::BadRequest(if path == "." {
            format!("the body is not valid: {inner}")
        } else {
            format!("the body is not valid at `{path}`: {inner}")
        })
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| commands::is_valid_key_length(key))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                commands::MAX_KEY_LEN
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// Gathers every invalid field of a request before answering, so that a client
/// learns all of them at once.
#[derive(Debug, Default)]
pub struct Fields {
    errors: Vec<ValidationError>,
}

impl Fields {
    /// A value that must be present.
    pub fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.errors.push(ValidationError::new(field, "is required"));
        }
        value
    }

    /// The outcome of parsing one field.
    pub fn check<T>(&mut self, parsed: Result<T, ValidationError>) -> Option<T> {
        parsed.map_err(|error| self.errors.push(error)).ok()
    }

    /// A required field parsed by `parse`.
    pub fn parse<R, T>(
        &mut self,
        field: &str,
        raw: Option<R>,
        parse: impl FnOnce(R) -> Result<T, ValidationError>,
    ) -> Option<T> {
        let raw = self.required(field, raw)?;
        self.check(parse(raw))
    }

    /// An optional field parsed by `parse` when present.
    pub fn optional<R, T>(
        &mut self,
        raw: Option<R>,
        parse: impl FnOnce(R) -> Result<T, ValidationError>,
    ) -> Option<Option<T>> {
        match raw {
            None => Some(None),
            Some(raw) => self.check(parse(raw)).map(Some),
        }
    }

    /// The built value when every field was valid, else a 422 naming the bad ones.
    pub fn finish<T>(self, built: Option<T>) -> Result<T, ApiError> {
        match built {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(ApiError::Invalid(self.errors)),
        }
    }
}

/// What every accepted command answers; a command family's answer adds its
/// own fields to it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The id of what the command created or changed.
    pub id: Uuid,
    /// The aggregate's version after the command.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see this command's effect.
    pub consistency: String,
}

impl Accepted {
    /// The answer naming the aggregate the command went to.
    pub fn of<A: Aggregate>(committed: &Committed<A>) -> Self {
        Self {
            id: committed.aggregate_id,
            version: committed.version,
            consistency: committed.token().encode(),
        }
    }

    /// The same answer naming something inside the aggregate (e.g. a message).
    pub fn naming(self, id: Uuid) -> Self {
        Self { id, ..self }
    }
}

/// A command's answer as it is sent: its body, the status it is sent with,
/// and `Idempotent-Replayed: true` when it repeats an earlier request's answer.
#[derive(Debug)]
pub struct Answer<T> {
    status: StatusCode,
    replayed: bool,
    body: T,
}

impl<T> Answer<T> {
    /// `200 OK` with `body`.
    pub fn ok<A: Aggregate>(committed: &Committed<A>, body: T) -> Self {
        Self {
            status: StatusCode::OK,
            replayed: committed.replayed,
            body,
        }
    }

    /// `201 Created` with `body`.
    pub fn created<A: Aggregate>(committed: &Committed<A>, body: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            ..Self::ok(committed, body)
        }
    }
}

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self.body)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// Path parameters; a malformed id names nothing that exists, so it is a 404.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(_: axum::extract::rejection::PathRejection) -> Self {
        ApiError::NotFound("no resource has that id")
    }
}
