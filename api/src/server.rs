//! The HTTP server: accepts connections, bounds how long a client may take to
//! send a request and how large its headers may be, and shuts down gracefully.
//!
//! A client that sends its headers or its body slowly, or never, would hold a
//! connection and its buffer forever; so would one that sends a megabyte of
//! headers. Each is answered (or cut) within limits every deployment can set.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::error::ApiError;

/// How long requests in flight get to finish after the signal to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What hyper buffers of one request's head at most: room for headers up to
/// [`ConnectionArgs::max_header_bytes`] to reach Herald and be answered with a
/// problem document; beyond it hyper answers 431 with no body.
const MAX_READ_BUFFER: usize = 2 * 1024 * 1024;

/// Limits on what one connection may take of the server.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Longest a client may take to send a request's headers; the connection
    /// is closed after it.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: humantime::Duration,

    /// Longest a client may pause while sending a request's body; the request
    /// is then answered 408.
    #[arg(long, env = "HERALD_BODY_READ_TIMEOUT", default_value = "30s")]
    pub body_read_timeout: humantime::Duration,

    /// Largest total size of a request's headers, in bytes; a larger request
    /// is answered 431.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10).into(),
            body_read_timeout: Duration::from_secs(30).into(),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Answers 431 with a problem document when a request's headers together
/// are larger than `limit` bytes.
pub async fn limit_headers(limit: usize, request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return ApiError::HeadersTooLarge { limit }.into_response();
    }
    next.run(request).await
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting connections and lets the requests in flight finish, for at most
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ConnectionArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Some(*limits.header_read_timeout))
        .max_buf_size(MAX_READ_BUFFER);
    let body_timeout = *limits.body_read_timeout;
    let max_header_bytes = limits.max_header_bytes;
    let router = router.layer(axum::middleware::from_fn(move |request, next| {
        limit_headers(max_header_bytes, request, next)
    }));
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(move |request: Request<hyper::body::Incoming>| {
                let (mut parts, body) = request.into_parts();
                parts.extensions.insert(ConnectInfo::<SocketAddr>(peer));
                Request::from_parts(
                    parts,
                    axum::body::Body::new(TimeoutBody::new(body_timeout, body)),
                )
            });
        let connection = http
            .serve_connection(TokioIo::new(socket), TowerToHyperService::new(service))
            .with_upgrades();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopping.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
        // Reap the connections that ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!("requests still in flight after the grace period; stopping anyway");
    }
    Ok(())
}
