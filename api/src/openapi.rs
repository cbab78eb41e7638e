//! The OpenAPI 3.1 document of Herald's HTTP surface, served at `/openapi.json`
//! and browsable at `/docs`.
//!
//! Each route is registered together with its `#[utoipa::path]` description
//! (`utoipa_axum::routes!`), so a route cannot be served without being
//! documented. What the middleware does to every route — request ids, rate
//! limits, bearer tokens under `/api/v1`, the opaque 500 — is added here once,
//! by [`finish`], so that it is written where the middleware is described and
//! not repeated on every handler.
//!
//! The read models' rows live in the `projections` crate, which knows nothing of
//! HTTP; their schemas are described here, beside the other answers, and a test
//! checks real answers against them.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use serde::Serialize;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, PathItem, PathsBuilder, Ref, RefOr, Required,
};
use utoipa::{IntoParams, Modify, ToResponse, ToSchema};
use uuid::Uuid;

use crate::error::Problem;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where the document can be browsed.
pub const DOCS_PATH: &str = "/docs";
/// The name of the bearer JWT security scheme.
pub const BEARER: &str = "bearer";
/// The name of the sandbox provider's shop authentication scheme; the
/// sandbox's routes name it literally in their `security(...)`.
pub const SHOP: &str = "shop";
/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The parts of the document that no handler owns: its title, the security
/// scheme, the reusable error answers and their schema.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "The HTTP API of Herald, the event-sourced backend of a care-at-home \
                       platform: chats, doctor visit bookings and their payments, their \
                       read models, and the audited event log.\n\n\
                       Commands answer `{ id, version, consistency }`; pass `consistency` to a \
                       read (`?consistency=` or `X-Consistency`) to read your own write. Errors \
                       are RFC 9457 problem documents (`application/problem+json`)."
    ),
    components(
        schemas(Problem),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            Invalid,
            TooManyRequests,
            Internal,
            BadGateway,
            Unavailable
        )
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "chats", description = "Chats, their members and messages"),
        (name = "bookings", description = "Doctor visits"),
        (name = "payments", description = "Paying for visits and refunds"),
        (name = "dashboard", description = "The admin summary"),
        (name = "audit", description = "The event log, for auditors and admins"),
        (name = "provider", description = "What the payment provider calls"),
        (name = "sandbox", description = "The built-in sandbox payment provider (development only)"),
        (name = "operations", description = "Health, metrics and this document; no token")
    )
)]
pub struct ApiDoc;

/// Declares the bearer JWT scheme the `/api/v1` routes require, and the shop
/// authentication of the sandbox provider's API.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with claims `sub` (user UUID), `role` (patient, doctor, \
                         admin or auditor) and `exp`; `herald up --dev` prints one per role.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SHOP,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "The shop id and secret key the sandbox provider was configured with \
                         (HERALD_PROVIDER_SHOP_ID, HERALD_PROVIDER_SECRET_KEY).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's base: everything [`ApiDoc`] declares, ready for the routes to
/// add their paths to.
pub fn base() -> OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Adds what applies to every route because of the middleware around them all,
/// and the routes whose answers no handler attribute can describe: the
/// document and its browser, the WebSocket and the event stream.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    for (path, item) in doc.paths.paths.iter_mut() {
        let api = path.starts_with("/api/v1/");
        for operation in operations(item) {
            complete(operation, api);
        }
    }
    let mut document = Operation::new();
    document.operation_id = Some("openapi_document".to_owned());
    document.summary = Some("This OpenAPI document".to_owned());
    document.responses.responses.insert(
        "200".to_owned(),
        RefOr::T(
            ResponseBuilder::new()
                .description("The OpenAPI 3.1 document")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                        .build(),
                )
                .build(),
        ),
    );
    let mut docs = Operation::new();
    docs.operation_id = Some("docs_page".to_owned());
    docs.summary = Some("Browse this document with Swagger UI, served by Herald itself".to_owned());
    docs.responses.responses.insert(
        "303".to_owned(),
        RefOr::T(
            ResponseBuilder::new()
                .description("Redirects to the Swagger UI page under `/docs/`")
                .header(
                    "Location",
                    HeaderBuilder::new().schema(Some(string_schema())).build(),
                )
                .build(),
        ),
    );
    let mut paths = PathsBuilder::new().build();
    for (path, mut operation) in [
        (DOCUMENT_PATH, document),
        (DOCS_PATH, docs),
        (WEBSOCKET_PATH, websocket()),
        (STREAM_PATH, stream()),
    ] {
        if operation.tags.is_none() {
            operation.tags = Some(vec!["operations".to_owned()]);
        }
        complete(&mut operation, path.starts_with("/api/v1/"));
        paths.paths.insert(
            path.to_owned(),
            PathItem::new(utoipa::openapi::HttpMethod::Get, operation),
        );
    }
    doc.paths.merge(paths);
    doc
}

/// The chat WebSocket, whose handler upgrades the connection itself.
const WEBSOCKET_PATH: &str = "/api/v1/ws";
/// The dashboards' server-sent events.
const STREAM_PATH: &str = "/api/v1/stream";

/// `GET /api/v1/ws`: described here because a WebSocket's messages are not
/// HTTP answers a handler could declare.
fn websocket() -> Operation {
    let mut operation = Operation::new();
    operation.operation_id = Some("chat_websocket".to_owned());
    operation.summary = Some("The chat WebSocket".to_owned());
    operation.description = Some(
        "After the handshake the server pushes every chat event of the caller's chats; \
         the client may send `{ \"type\": \"send_message\", \"chat_id\", \"client_id\", \"body\" }` \
         and is answered `{ \"type\": \"ack\", \"client_id\", \"message_id\", \"seq\" }` once it \
         is stored. Browsers, which cannot set headers on a WebSocket, may pass the token as \
         `?token=`."
            .to_owned(),
    );
    operation.tags = Some(vec!["chats".to_owned()]);
    operation.parameters = Some(vec![RefOr::T(
        ParameterBuilder::new()
            .name("token")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(
                "The bearer token, when no Authorization header is sent",
            ))
            .schema(Some(string_schema()))
            .build(),
    )]);
    let responses = &mut operation.responses.responses;
    responses.insert(
        "101".to_owned(),
        RefOr::T(
            ResponseBuilder::new()
                .description("Switched to the WebSocket protocol")
                .build(),
        ),
    );
    add_missing(&mut operation, "400", "BadRequest");
    add_missing(&mut operation, "503", "Unavailable");
    operation
}

/// `GET /api/v1/stream`: described here because its answer is a stream of
/// events, not one body.
fn stream() -> Operation {
    let mut operation = Operation::new();
    operation.operation_id = Some("dashboard_stream".to_owned());
    operation.summary =
        Some("Projection changes the caller may see, as server-sent events".to_owned());
    operation.tags = Some(vec!["dashboard".to_owned()]);
    operation.parameters = Some(vec![RefOr::T(
        ParameterBuilder::new()
            .name("Last-Event-ID")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("Resume after this log position (an event's `id:`)"))
            .schema(Some(integer_schema()))
            .build(),
    )]);
    let responses = &mut operation.responses.responses;
    responses.insert(
        "200".to_owned(),
        RefOr::T(
            ResponseBuilder::new()
                .description("Events, each with `id:` its log position")
                .content("text/event-stream", ContentBuilder::new().build())
                .build(),
        ),
    );
    add_missing(&mut operation, "400", "BadRequest");
    add_missing(&mut operation, "503", "Unavailable");
    operation
}

/// Every operation of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds to one operation what the middleware adds to every request: the
/// request id both ways, the rate limit (its headers and the 429), the opaque
/// 500, and, under `/api/v1`, the bearer token and its 401.
fn complete(operation: &mut Operation, api: bool) {
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(request_id_parameter()));
    if api {
        operation.security = Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
        add_missing(operation, "401", "Unauthorized");
    }
    add_missing(operation, "429", "TooManyRequests");
    add_missing(operation, "500", "Internal");
    let idempotent = operation
        .parameters
        .iter()
        .flatten()
        .any(|parameter| matches!(parameter, RefOr::T(p) if p.name == "Idempotency-Key"));
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response {
            add_common_headers(response);
            if idempotent && status.starts_with('2') {
                response.headers.insert(
                    "Idempotent-Replayed".to_owned(),
                    RefOr::T(
                        HeaderBuilder::new()
                            .schema(Some(string_schema().enum_values(Some(["true"]))))
                            .description(Some(
                                "`true` when this is the stored answer to an earlier request \
                                 with the same Idempotency-Key",
                            ))
                            .build(),
                    ),
                );
            }
        }
    }
}

/// Answers `status` with the reusable response `name` unless the route
/// describes it itself.
fn add_missing(operation: &mut Operation, status: &str, name: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

fn request_id_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("X-Request-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "An id for this request, echoed in the answer, quoted in problem documents and \
             recorded as the correlation id of every event the request causes. One is \
             generated when it is absent, empty or longer than 128 characters.",
        ))
        .schema(Some(string_schema()))
        .build()
}

/// The headers every answer carries: the request id and the rate limit's state.
fn add_common_headers(response: &mut ApiResponse) {
    let headers: [(&str, &str, ObjectBuilder); 4] = [
        (
            "X-Request-Id",
            "The request's id: the client's `X-Request-Id` or a generated one",
            string_schema(),
        ),
        (
            "RateLimit-Limit",
            "Requests the caller's bucket holds (absent when rate limits are off)",
            integer_schema(),
        ),
        (
            "RateLimit-Remaining",
            "Requests left in the bucket (absent when rate limits are off)",
            integer_schema(),
        ),
        (
            "RateLimit-Reset",
            "Seconds until the bucket lets a request through again; 0 when it does now",
            integer_schema(),
        ),
    ];
    for (name, description, schema) in headers {
        response.headers.entry(name.to_owned()).or_insert_with(|| {
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(schema))
                    .description(Some(description))
                    .build(),
            )
        });
    }
}

/// A problem answer with `status`, optionally asking the client to wait.
fn problem(description: &str, retry_after: bool) -> ApiResponse {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    if retry_after {
        response.headers.insert(
            "Retry-After".to_owned(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(integer_schema()))
                    .description(Some("Seconds to wait before trying again"))
                    .build(),
            ),
        );
    }
    add_common_headers(&mut response);
    response
}

/// Declares a reusable problem answer, referenced from routes as
/// `(status = 404, response = NotFound)`.
macro_rules! problem_response {
    ($(#[$doc:meta])* $name:ident, $description:expr, $retry_after:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<ApiResponse>) {
                (stringify!($name), RefOr::T(problem($description, $retry_after)))
            }
        }
    };
}

problem_response!(
    /// 400: the request cannot be read.
    BadRequest,
    "The request is malformed: the body is not JSON or not sent as JSON, has an unknown \
     field or a value of the wrong JSON type; or a header or token is malformed",
    false
);
problem_response!(
    /// 401: no valid credentials.
    Unauthorized,
    "No token, a bad signature or an expired token (for the webhook: no valid signature)",
    false
);
problem_response!(
    /// 403: the caller may not do this.
    Forbidden,
    "The caller's role or relation to the resource forbids it",
    false
);
problem_response!(
    /// 404: nothing the caller may see has that id.
    NotFound,
    "No such resource, or none the caller may see",
    false
);
problem_response!(
    /// 409: the state does not allow it.
    Conflict,
    "The resource's state does not allow it, a concurrent change won, or the \
     Idempotency-Key was used with another body",
    false
);
problem_response!(
    /// 413: the body is over 64 KiB.
    PayloadTooLarge,
    "The body is larger than 64 KiB",
    false
);
problem_response!(
    /// 422: well-formed but invalid values.
    Invalid,
    "Well-formed but invalid values; `errors` names each bad field",
    false
);
problem_response!(
    /// 429: over the rate limit.
    TooManyRequests,
    "Too many requests from this caller or address; wait `Retry-After` seconds",
    true
);
problem_response!(
    /// 500: something failed inside Herald.
    Internal,
    "An internal error; the detail is opaque and carries the request id",
    false
);
problem_response!(
    /// 502: the payment provider refused.
    BadGateway,
    "The payment provider refused the request",
    false
);
problem_response!(
    /// 503: a dependency is down or the read model is behind.
    Unavailable,
    "A dependency the request needs is down, or the read model did not catch up with \
     the awaited command within 2 s; nothing was stored, try again after `Retry-After`",
    true
);

/// The `Idempotency-Key` header every command accepts.
pub struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes the command safe to repeat: the same key with the same body answers \
                 the first answer (with `Idempotent-Replayed: true`) and stores nothing new; \
                 the same key with another body is a 409.",
            ))
            .schema(Some(
                string_schema()
                    .min_length(Some(1))
                    .max_length(Some(255))
                    .pattern(Some("^[\\x21-\\x7e]([\\t\\x20-\\x7e]*[\\x21-\\x7e])?$")),
            ))
            .build()]
    }
}

/// The consistency token a read may wait for, by query or by header.
pub struct ConsistencyParams;

impl IntoParams for ConsistencyParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let description = "A command's `consistency` token: the read waits (at most 2 s, \
                           then 503) until the read models it uses applied that command.";
        vec![
            ParameterBuilder::new()
                .name("consistency")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(string_schema()))
                .build(),
            ParameterBuilder::new()
                .name("X-Consistency")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(string_schema()))
                .build(),
        ]
    }
}

/// Sets the headers that let Swagger UI run in a browser: its own scripts,
/// styles and images, and nothing from elsewhere.
async fn docs_headers(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// `GET /openapi.json` and `GET /docs`: the document and Swagger UI, whose
/// files are compiled into Herald (nothing is fetched at build or run time).
pub fn routes<S: Clone + Send + Sync + 'static>(doc: OpenApi) -> Router<S> {
    let config = utoipa_swagger_ui::Config::from(DOCUMENT_PATH)
        // Swagger UI otherwise sends the document to an outside validator.
        .validator_url("none");
    Router::from(
        utoipa_swagger_ui::SwaggerUi::new(DOCS_PATH)
            .url(DOCUMENT_PATH, doc)
            .config(config),
    )
    .layer(axum::middleware::map_response(docs_headers))
}

// ---------------------------------------------------------------------------
// Answers. Commands answer `{ id, version, consistency }` and a few fields of
// their own; reads answer read model rows.

/// Serialized names of a chat's kind.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatKindName {
    /// Two people.
    Direct,
    /// Any number of members.
    Group,
}

/// Serialized names of a visit's type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallTypeName {
    /// As soon as possible.
    Urgent,
    /// At `scheduled_at`.
    Scheduled,
    /// A consultation.
    Consultation,
}

/// Serialized names of a booking's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatusName {
    /// Requested, no doctor yet.
    Pending,
    /// A doctor took it.
    Assigned,
    /// The visit happened.
    Completed,
    /// Called off.
    Cancelled,
}

/// Serialized names of a payment's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatusName {
    /// Waiting for the patient to confirm it with the provider.
    Pending,
    /// The money was taken.
    Succeeded,
    /// Declined or abandoned.
    Failed,
    /// A refund was asked for.
    RefundPending,
    /// The money went back.
    Refunded,
}

/// Serialized names of a payment method.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethodName {
    /// A bank card.
    Card,
    /// The Faster Payments System.
    Sbp,
}

/// The answer to an accepted command.
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

/// The answer to an accepted booking command.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingAccepted {
    /// The booking's id.
    pub id: Uuid,
    /// The booking's version after the command.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see this command's effect.
    pub consistency: String,
    /// The booking's status after the command.
    pub status: BookingStatusName,
}

/// The answer to a sent message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageSent {
    /// The message's id.
    pub id: Uuid,
    /// The chat's version after the command.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see the message.
    pub consistency: String,
    /// The chat.
    pub chat_id: Uuid,
    /// The message's place in the chat, from 1 without gaps.
    #[schema(minimum = 1)]
    pub seq: u64,
}

/// The answer to an edited or deleted message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageChanged {
    /// The message's id.
    pub id: Uuid,
    /// The chat's version after the command.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see the change.
    pub consistency: String,
    /// The chat.
    pub chat_id: Uuid,
}

/// The answer to a started payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentStarted {
    /// The payment's id.
    pub id: Uuid,
    /// The payment's version after the command.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see the payment.
    pub consistency: String,
    /// Always `pending`: the patient has yet to confirm it.
    pub status: PaymentStatusName,
    /// The booking paid for.
    pub booking_id: Uuid,
    /// The booking's price, in minor units.
    pub amount_minor: i64,
    /// The price's ISO 4217 currency.
    pub currency: String,
    /// The provider's reference for the charge.
    pub provider_payment_id: String,
    /// Where the patient confirms the charge.
    pub confirmation_url: String,
}

/// The answer to a payment command that changed its status.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentChanged {
    /// The payment's id.
    pub id: Uuid,
    /// The payment's version after the command.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see the change.
    pub consistency: String,
    /// The payment's status after the command.
    pub status: PaymentStatusName,
}

/// The answer to an applied (or repeated) provider notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationApplied {
    /// The Herald payment.
    pub id: Uuid,
    /// The payment's version after the notification.
    #[schema(minimum = 0)]
    pub version: u64,
    /// Pass to a read as `?consistency=` to see the change.
    pub consistency: String,
    /// The notification's event.
    pub event: String,
}

/// A chat in the caller's chat list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatListItem {
    /// The chat's id.
    pub id: Uuid,
    /// `direct` or `group`.
    pub kind: ChatKindName,
    /// The display name, if one was given.
    pub title: Option<String>,
    /// Current members in the order they joined.
    pub members: Vec<Uuid>,
    /// `{ id, seq, author, body, sent_at }` of the newest message not deleted.
    #[schema(value_type = Option<Object>)]
    pub last_message: Option<serde_json::Value>,
    /// Messages after the caller's read marker, not deleted, written by others.
    #[schema(minimum = 0)]
    pub unread_count: i64,
}

/// The caller's chats.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatList {
    /// Every chat the caller is a member of.
    pub items: Vec<ChatListItem>,
}

/// A chat on its own.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatView {
    /// The chat's id.
    pub id: Uuid,
    /// `direct` or `group`.
    pub kind: ChatKindName,
    /// The display name, if one was given.
    pub title: Option<String>,
    /// Who opened it.
    pub created_by: Uuid,
    /// When it was opened.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Current members in the order they joined.
    pub members: Vec<Uuid>,
    /// `{ id, seq, author, body, sent_at }` of the newest message not deleted.
    #[schema(value_type = Option<Object>)]
    pub last_message: Option<serde_json::Value>,
}

/// One message of a chat's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// The message's id.
    pub id: Uuid,
    /// Its place in the chat, from 1 without gaps.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// Who wrote it.
    pub author: Uuid,
    /// The text; `null` once deleted.
    pub body: Option<String>,
    /// When it was sent.
    pub sent_at: chrono::DateTime<chrono::Utc>,
    /// When it was last edited, if ever.
    pub edited_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it was retracted.
    pub deleted: bool,
}

/// A page of a chat's messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    /// The messages.
    pub items: Vec<MessageView>,
    /// Pass as `before_seq` for older messages; `null` on the last page.
    pub next_before_seq: Option<i64>,
}

/// A booking as readers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingView {
    /// The booking's id.
    pub id: Uuid,
    /// Who receives the visit.
    pub patient_id: Uuid,
    /// The doctor who took it, once assigned.
    pub doctor_id: Option<Uuid>,
    /// The visit's type.
    pub call_type: CallTypeName,
    /// Where to go.
    pub address: String,
    /// The price in minor units.
    pub amount_minor: i64,
    /// The price's ISO 4217 currency.
    pub currency: String,
    /// The agreed time, for scheduled visits.
    pub scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where the booking is in its life.
    pub status: BookingStatusName,
    /// Whether a payment for it succeeded; stays set after a refund.
    pub paid: bool,
    /// The payment that settled it, else the latest one started for it.
    pub payment_id: Option<Uuid>,
    /// That payment's status; `null` before any payment was started.
    #[schema(value_type = Option<PaymentStatusName>)]
    pub payment_status: Option<String>,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// When the patient asked for it.
    pub requested_at: chrono::DateTime<chrono::Utc>,
    /// When the latest event that changed it was stored.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A page of bookings.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingPage {
    /// The bookings, oldest request first.
    pub items: Vec<BookingView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A payment as readers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    /// The payment's id.
    pub id: Uuid,
    /// The booking paid for.
    pub booking_id: Uuid,
    /// The patient paying.
    pub patient_id: Uuid,
    /// How the patient pays.
    pub method: PaymentMethodName,
    /// The charge in minor units.
    pub amount_minor: i64,
    /// The charge's ISO 4217 currency.
    pub currency: String,
    /// Where the payment is in its life.
    pub status: PaymentStatusName,
    /// The provider's reference for the charge.
    pub provider_payment_id: Option<String>,
    /// Where the patient confirms the charge.
    pub confirmation_url: Option<String>,
    /// When the patient started paying.
    pub initiated_at: chrono::DateTime<chrono::Utc>,
    /// When the latest event that changed it was stored.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A booking's payments.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentList {
    /// Every payment started for the booking.
    pub items: Vec<PaymentView>,
}

/// Money kept in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueView {
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units succeeded minus refunded.
    pub amount_minor: i64,
}

/// What the admin dashboard shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryView {
    /// How many bookings are in each status, zero included.
    pub bookings_by_status: BTreeMap<String, i64>,
    /// How many payments are in each status, zero included.
    pub payments_by_status: BTreeMap<String, i64>,
    /// Money kept per currency.
    pub revenue: Vec<RevenueView>,
}

/// What `/health/live` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `live`.
    pub status: String,
}

/// What `/health/ready` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessView {
    /// `ready` or `not_ready`.
    pub status: String,
    /// The names of the failed checks.
    pub failing: Vec<String>,
    /// Each check by name (`postgres`, `nats`, `relay`, `projection:<name>`), with
    /// `ok` and what was measured.
    #[schema(value_type = Object)]
    pub checks: serde_json::Value,
}

/// One entry of the event log as auditors read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Dense position in commit order, from 1.
    #[schema(minimum = 1)]
    pub position: i64,
    /// The event's identity in the store.
    pub event_id: i64,
    /// `Chat`, `Booking` or `Payment`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event's sequence within its aggregate, from 1.
    #[schema(minimum = 1)]
    pub sequence: i64,
    /// The event's type, e.g. `MessageSent`.
    pub event_type: String,
    /// The version of the payload's shape.
    pub event_version: String,
    /// The event as stored.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// `actor, role, correlation_id, causation_id` (and `idempotency_key,
    /// request_hash` for commands sent with one) plus `recorded_at`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// When the event was stored, RFC 3339 with microseconds.
    pub recorded_at: String,
    /// Its link in the log's hash chain (hex), once the relay linked it.
    pub hash: Option<String>,
    /// Its link in its aggregate's hash chain (hex), once linked.
    pub aggregate_hash: Option<String>,
}

/// A page of the event log.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Entries in position order.
    pub items: Vec<AuditEntryView>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

/// One aggregate's whole history.
#[derive(Debug, Serialize, ToSchema)]
pub struct AggregateHistory {
    /// Its entries in order.
    pub items: Vec<AuditEntryView>,
}

/// An aggregate folded up to a point of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AggregateStateView {
    /// `Chat`, `Booking` or `Payment`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The sequence of the last event folded in.
    pub version: i64,
    /// That event's log position.
    pub position: i64,
    /// When that event was stored.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The aggregate's state, as the domain serializes it.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

/// A point of the log kept outside the database.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    /// The entry's position.
    pub position: i64,
    /// The log chain's hash there, hex.
    pub hash: String,
}

/// What a verification of the log found.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    /// Whether both chains hold over the whole log (and pass the expected checkpoint).
    pub ok: bool,
    /// Entries found intact, from position 1 on.
    pub events_checked: i64,
    /// The first position where the log is not what was hashed.
    pub first_bad_position: Option<i64>,
    /// What is wrong there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last intact entry: what `herald audit checkpoint` prints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<CheckpointView>,
}
