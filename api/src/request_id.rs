//! The request id: taken from `X-Request-Id` or generated, echoed in the response,
//! recorded as the correlation id of every event the request causes, and quoted
//! in error answers.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use herald_nats::trace;
use uuid::Uuid;

/// The header that carries the request id both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id accepted from a client; a longer one is replaced.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, if called while handling one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Middleware: settles the request id, runs the request with it in scope and in
/// a tracing span (the child of the caller's, when a W3C `traceparent` header
/// names one), and echoes it in the response.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= MAX_LEN)
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), header.clone());
    let traceparent = request
        .headers()
        .get(trace::TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    let span = trace::continued(
        tracing::info_span!(target: trace::TARGET, "request", request_id = %id, method = %request.method(), path = %request.uri().path()),
        traceparent,
    );
    let mut response =
        tracing::Instrument::instrument(REQUEST_ID.scope(id, next.run(request)), span).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), header);
    response
}
