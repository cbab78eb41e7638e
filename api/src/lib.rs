//! Herald's HTTP server and the `herald` command line.
//!
//! `startup::Application::build` assembles a running Herald from its settings,
//! for `herald up` and for every test; `router(state, surface)` is its
//! HTTP surface and `server::serve` runs it until shutdown. The `herald` subcommands
//! live in `cli`; the binary in `main.rs` only parses and dispatches.

pub mod attachments;
pub mod auth;
pub mod background;
pub mod cli;
pub mod command;
pub mod conditional;
pub mod config;
pub mod consistency;
pub mod dashboard;
pub mod db;
pub mod deliveries;
pub mod dev;
pub mod email;
pub mod error;
pub mod hooks;
pub mod limits;
pub mod live;
pub mod notify;
pub mod openapi;
pub mod ops;
pub mod passwords;
pub mod provider;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod startup;
pub mod telemetry;
pub mod throttle;

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use axum::Router;
use commands::gateway::PaymentGateway;
use commands::WriteSide;
use herald_nats::RelayStatus;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::JwtKeys;
use crate::error::ApiError;
use crate::limits::RateLimits;
use crate::ops::Ops;
use crate::provider::sandbox::Sandbox;
use crate::provider::webhook::WebhookSecret;

/// What every request handler shares. Every request's extractors take a
/// copy of it, so a copy is one reference count, however many parts it has.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of `shared` parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// Executes commands against the event store.
    pub write: Arc<WriteSide>,
    /// The connections reads run on.
    pub readers: Arc<db::Readers>,
    /// Checks callers' tokens.
    pub keys: JwtKeys,
    /// The payment provider, behind timeouts, retries and a circuit breaker.
    pub gateway: Arc<dyn PaymentGateway>,
    /// Checks the payment provider's signature on its notifications.
    pub webhook_secret: WebhookSecret,
    /// The built-in sandbox provider, when it is the one in use.
    pub sandbox: Option<Arc<Sandbox>>,
    /// The live gateway's hub; without one, `/ws` and `/stream` answer 503.
    pub live: Option<Arc<live::LiveHub>>,
    /// Token buckets, spent by requests and by live frames that issue
    /// commands; none means no rate limits.
    pub limits: Option<Arc<RateLimits>>,
    /// Failed sign-ins per account and address.
    pub sign_ins: Arc<throttle::SignInThrottle>,
    /// How people are notified.
    pub notify: Arc<notify::NotifyConfig>,
    /// The answers of list reads as last built, kept while their tags hold.
    pub pages: Arc<conditional::Pages>,
    /// Where attachments are stored, and their signed URLs.
    pub attachments: Arc<attachments::Attachments>,
}

/// What a running Herald adds around its routes.
pub struct Surface {
    /// The NATS client, for readiness.
    pub nats: Option<async_nats::Client>,
    /// The relay running in this process, for readiness and metrics.
    pub relay: Option<Arc<RelayStatus>>,
    /// Browser origins allowed to call the API; none means no CORS headers.
    pub cors_origins: Vec<HeaderValue>,
}

/// The whole HTTP surface of Herald: the API under `/api/v1`, the payment
/// webhook and sandbox, the operations endpoints, and around them request ids,
/// metrics, rate limits, security headers and CORS.
pub fn router(state: AppState, surface: Surface) -> Router {
    let ops = Arc::new(Ops::new(
        state.write.pool().clone(),
        surface.nats,
        surface.relay,
    ));
    let (documented, doc) = documented(&state, ops.clone()).split_for_parts();
    // The WebSocket and the event stream answer no single body a handler
    // attribute could describe; `openapi::finish` describes them.
    let api = Router::new().merge(routes::live::routes());
    let mut app = documented
        .nest("/api/v1", api)
        .merge(openapi::routes(openapi::finish(doc)))
        .route_layer(axum::middleware::from_fn_with_state(ops, ops::track_http))
        .fallback(|| async { ApiError::NotFound("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    if let Some(limits) = state.limits.clone() {
        app = app.layer(axum::middleware::from_fn_with_state(
            limits,
            limits::enforce,
        ));
    }
    if !surface.cors_origins.is_empty() {
        app = app.layer(cors(surface.cors_origins));
    }
    app.layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The routes registered together with their OpenAPI descriptions, so that
/// none is served undocumented: the API under `/api/v1`, the payment webhook
/// and sandbox, the attachments' own URLs where they are kept locally, the
/// dashboard, and the operations endpoints.
fn documented(state: &AppState, ops: Arc<Ops>) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .merge(routes::chats::routes())
        .merge(routes::attachments::routes())
        .merge(routes::bookings::routes())
        .merge(routes::payments::routes())
        .merge(routes::reads::routes())
        .merge(routes::audit::routes())
        .merge(routes::auth::routes())
        .merge(routes::users::routes())
        .merge(routes::notifications::routes())
        .merge(routes::hooks::routes());
    let mut outside =
        OpenApiRouter::with_openapi(openapi::base()).merge(provider::webhook::routes());
    if state.sandbox.is_some() {
        outside = outside.merge(provider::sandbox::routes());
    }
    if state.attachments.is_local() {
        outside = outside.merge(routes::attachments::local_routes());
    }
    outside
        .nest("/api/v1", api)
        .merge(dashboard::routes(state.clone(), ops.clone()))
        .merge(ops::routes(ops))
}

/// Headers that keep browsers from misreading or framing Herald's answers,
/// and caches from keeping what a caller's token let them see (addresses, chat
/// bodies).
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let authenticated = request
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION)
        || request.uri().path().starts_with("/api/v1/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if authenticated {
        headers
            .entry(axum::http::header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

fn cors(origins: Vec<HeaderValue>) -> tower_http::cors::CorsLayer {
    use axum::http::{header, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-consistency"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("idempotent-replayed"),
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            header::RETRY_AFTER,
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
