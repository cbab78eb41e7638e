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
//! Every answer is described by the type its handler returns: command answers
//! are declared beside their handlers, read answers are the read models' own
//! rows, and a test checks real answers against the document.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, PathItem, PathsBuilder, Ref, RefOr, Required,
};
use utoipa::{IntoParams, Modify, ToResponse};

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
            NoAccount,
            Conflict,
            PayloadTooLarge,
            Invalid,
            TooManyRequests,
            Internal,
            BadGateway,
            Unavailable,
            NotModified
        )
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "chats", description = "Chats, their members and messages"),
        (name = "bookings", description = "Doctor visits"),
        (name = "payments", description = "Paying for visits and refunds"),
        (name = "notifications", description = "What happened that concerns the caller, and how they want to hear of it"),
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
        "After the handshake the server sends `{ \"type\": \"ready\", \"position\" }`, then \
         pushes every chat event of the caller's chats as `{ \"type\": \"event\", \"position\", \
         \"chat_id\", \"event_type\", \"event\" }`, each new notification of theirs as \
         `{ \"type\": \"notification\", …}` (the fields of an item of `GET /notifications`), \
         `{ \"type\": \"presence\", \"user_id\", \"online\", \"last_seen_at\" }` whenever someone \
         who shares a chat with them comes online or goes offline, and \
         `{ \"type\": \"typing\", \"chat_id\", \"user_id\" }` when another member types. The client \
         may send `{ \"type\": \"send_message\", \"chat_id\", \"client_id\", \"body\" }` and is \
         answered `{ \"type\": \"ack\", \"client_id\", \"message_id\", \"seq\" }` once it is stored, \
         and `{ \"type\": \"typing\", \"chat_id\" }` (members only, at most one per chat a second; \
         the others are dropped; never answered unless refused). A refused frame is answered \
         `{ \"type\": \"error\", \"client_id\"?, \"status\", \"detail\", \"errors\"? }` and the \
         socket stays open. Browsers, which cannot set headers on a WebSocket, may pass the \
         token as `?token=`."
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
                .description(
                    "Events, each with `id:` its log position; and the caller's new \
                     notifications as events named `notification`, without an `id:`, whose \
                     data is `{ \"type\": \"notification\", …}` (the fields of an item of \
                     `GET /notifications`)",
                )
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
/// 500, and, under `/api/v1`, the bearer token and its 401, unless the route
/// says it needs none (signing up and in).
fn complete(operation: &mut Operation, api: bool) {
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(request_id_parameter()));
    if api && operation.security.is_none() {
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
    let conditional = operation.responses.responses.contains_key("304");
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response {
            add_common_headers(response);
            if conditional && status == "200" {
                response.headers.insert("ETag".to_owned(), etag_header());
            }
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
    /// 404: the caller's token names nobody with an account.
    NoAccount,
    "The caller has no account (a service account's token)",
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
        vec![idempotency_header(
            "Idempotency-Key",
            Required::False,
            "Makes the command safe to repeat: the same key with the same body answers \
             the first answer (with `Idempotent-Replayed: true`) and stores nothing new; \
             the same key with another body is a 409.",
        )]
    }
}

/// The `Idempotence-Key` header the sandbox provider's API requires.
pub struct IdempotenceKeyHeader;

impl IntoParams for IdempotenceKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![idempotency_header(
            commands::gateway::sandbox::IDEMPOTENCE_KEY,
            Required::True,
            "Makes a repeated request answer what the first one did",
        )]
    }
}

/// A header carrying an idempotency key: 1 to [`commands::MAX_KEY_LEN`]
/// visible ASCII characters.
fn idempotency_header(name: &str, required: Required, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(required)
        .description(Some(description))
        .schema(Some(
            string_schema()
                .min_length(Some(1))
                .max_length(Some(commands::MAX_KEY_LEN))
                .pattern(Some("^[\\x21-\\x7e]([\\t\\x20-\\x7e]*[\\x21-\\x7e])?$")),
        ))
        .build()
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

/// 304: the client's copy, named by `If-None-Match`, is still current.
pub struct NotModified;

impl<'r> ToResponse<'r> for NotModified {
    fn response() -> (&'r str, RefOr<ApiResponse>) {
        let mut response = ResponseBuilder::new()
            .description(
                "Nothing changed since the copy whose tag `If-None-Match` named: no body; \
                 the access checks of a full read were made all the same",
            )
            .build();
        response.headers.insert("ETag".to_owned(), etag_header());
        add_common_headers(&mut response);
        ("NotModified", RefOr::T(response))
    }
}

/// The `ETag` header of a read that may be answered 304.
fn etag_header() -> RefOr<utoipa::openapi::header::Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(string_schema()))
            .description(Some(
                "What the answer was built from: the version of the row it shows, or for \
                 a list its read model's position, with the caller and the query. Send it \
                 back as `If-None-Match` to be answered 304 while it holds.",
            ))
            .build(),
    )
}

/// The `If-None-Match` header of a conditional read.
pub struct ConditionalParams;

impl IntoParams for ConditionalParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![ParameterBuilder::new()
            .name("If-None-Match")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "The `ETag` of the copy the client holds: while it is current the answer is \
                 a 304 with no body.",
            ))
            .schema(Some(string_schema()))
            .build()]
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
