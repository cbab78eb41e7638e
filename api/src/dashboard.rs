//! The built-in dashboard: the page at `/dashboard` with its script, style
//! sheet and charting library, all embedded in the binary, and the JSON it
//! reads beside the summary and activity (`routes/reads.rs`): the pipeline's
//! health and the retry of dead letters.
//!
//! The page holds no data of its own: it signs in through
//! `/api/v1/auth/login`, keeps the token in the tab's session storage, and
//! refetches its figures when the SSE stream (`/api/v1/stream`) says the log
//! moved. Its Content-Security-Policy admits scripts, styles and connections
//! from Herald itself only.

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::access;
use projections::Projection;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::command::Path;
use crate::error::ApiError;
use crate::openapi;
use crate::ops::{Ops, Pipeline};
use crate::AppState;

/// The policy of the page and its assets: everything from Herald itself, no
/// inline script; styles the charting library sets on its own elements are
/// set through the CSS object model, which `style-src` does not govern.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// What the dashboard's handlers share: the application and the operations
/// view of this process.
#[derive(Clone)]
pub struct Dashboard {
    app: AppState,
    ops: Arc<Ops>,
}

impl FromRef<Dashboard> for AppState {
    fn from_ref(dashboard: &Dashboard) -> Self {
        dashboard.app.clone()
    }
}

/// The page and its assets, and the pipeline's JSON under `/api/v1`.
pub fn routes<S: Clone + Send + Sync + 'static>(app: AppState, ops: Arc<Ops>) -> OpenApiRouter<S> {
    let api = OpenApiRouter::new()
        .routes(routes!(pipeline))
        .routes(routes!(retry_dead_letters));
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(asset))
        .nest("/api/v1", api)
        .with_state(Dashboard { app, ops })
}

/// An embedded file: its name under `/dashboard/assets/`, type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/dashboard.css"),
    },
    Asset {
        name: "echarts.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/vendor/echarts/echarts.min.js"),
    },
];

/// An embedded file answered with the page's policy. The files change only
/// with the binary, so browsers may keep them for a while.
fn embedded(content_type: &'static str, bytes: &'static [u8], cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// The dashboard page. It asks for nothing until someone signs in on it; admins
/// see every panel, auditors the pipeline's.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    operation_id = "dashboard_page",
    security(()),
    responses(
        (status = 200, description = "The page; its figures come from the JSON routes", content_type = "text/html", body = String),
    )
)]
async fn page() -> Response {
    embedded(
        "text/html; charset=utf-8",
        include_bytes!("../assets/dashboard/index.html"),
        "no-cache",
    )
}

/// A script or style sheet of the page, embedded in the binary.
#[utoipa::path(
    get,
    path = "/dashboard/assets/{file}",
    tag = "dashboard",
    operation_id = "dashboard_asset",
    security(()),
    params(("file" = String, Path, description = "`dashboard.js`, `dashboard.css` or `echarts.min.js`")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript", body = String),
        (status = 404, response = openapi::NotFound),
    )
)]
async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == file)
        .ok_or(ApiError::NotFound("no such dashboard asset"))?;
    Ok(embedded(
        asset.content_type,
        asset.bytes,
        "public, max-age=300",
    ))
}

/// The pipeline's health: the log's head, the relay of this process, each
/// projection's lag in positions and time, dead letters, WebSockets and the
/// command rate with its 99th percentile latency.
#[utoipa::path(
    get,
    path = "/dashboard/pipeline",
    tag = "dashboard",
    operation_id = "get_pipeline",
    responses(
        (status = 200, description = "The figures", body = Pipeline),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn pipeline(
    State(dashboard): State<Dashboard>,
    Caller(actor): Caller,
) -> Result<Json<Pipeline>, ApiError> {
    access::may_see_pipeline(actor)?;
    let sockets = dashboard.app.live.as_ref().map(|hub| hub.sockets());
    Ok(Json(dashboard.ops.pipeline(sockets).await?))
}

/// What retrying a projection's dead letters did.
#[derive(Debug, Serialize, ToSchema)]
struct Retried {
    /// Dead letters that now applied and were removed.
    applied: usize,
    /// Dead letters that still fail; each counts one more attempt.
    failing: usize,
}

/// Applies a projection's dead letters again, oldest first; each one that now
/// applies is removed. The payment process manager's are not retried here:
/// they are listed for an operator to act on.
#[utoipa::path(
    post,
    path = "/dashboard/dead-letters/{projection}/retry",
    tag = "dashboard",
    operation_id = "retry_dead_letters",
    params(("projection" = String, Path, description = "A projection's name, e.g. `chats`")),
    responses(
        (status = 200, description = "What the retry did", body = Retried),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn retry_dead_letters(
    State(dashboard): State<Dashboard>,
    Caller(actor): Caller,
    Path(projection): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    access::may_retry_dead_letters(actor)?;
    let projection: Projection = projection
        .parse()
        .map_err(|_| ApiError::NotFound("no projection of that name"))?;
    let (applied, failing) =
        projections::retry_dead_letters(dashboard.app.write.pool(), projection).await?;
    Ok(Json(Retried { applied, failing }))
}
