//! Live updates: the chat WebSocket (`/ws`) and the dashboards' SSE stream
//! (`/stream`). Both are fed by the process's [`LiveHub`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use commands::{request_hash, CommandError, IdempotencyKey, Metadata};
use domain::chat::{Chat, ChatCommand, ChatEvent};
use domain::values::{Actor, MessageBody};
use futures::{SinkExt, StreamExt};
use herald_nats::{log, LogEntry};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::live::{Audience, AudienceError, Connection, Kick, LiveError, LiveHub, Notice};
use crate::routes::notifications;
use crate::AppState;

/// Largest frame a client may send; a message body is at most 4000 characters.
const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Bytes read from a socket at a time. Client frames are small, and the
/// library's default of 128 KiB per socket would dominate the memory of
/// thousands of idle connections.
const READ_BUFFER: usize = 4 * 1024;
/// Answers to a client's frames queued for its socket; a client that sends
/// without reading waits for this to drain.
const REPLY_BUFFER: usize = 32;
/// Entries read from the log per query while an SSE stream catches up.
const REPLAY_BATCH: i64 = 500;
/// WebSocket close code: the client was too slow to keep up (RFC 6455 §7.4.1:
/// "policy violation").
const CLOSE_TOO_SLOW: u16 = 1008;
/// WebSocket close code: a frame was larger than the server takes (RFC 6455
/// §7.4.1: "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code: the server is going away.
const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code: the server cannot serve the connection right now.
const CLOSE_TRY_AGAIN: u16 = 1013;

/// The live routes, under `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ws", get(websocket))
        .route("/stream", get(stream))
}

/// A 503 problem for an instance that runs without a live hub.
fn not_running() -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "type": "https://herald.dev/problems/service-unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "live updates are not running on this instance",
            "request_id": crate::request_id::current(),
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// The caller of a WebSocket handshake: the `Authorization` header as
/// everywhere, or `?token=`, since browsers cannot set headers on a WebSocket.
async fn handshake_caller(parts: &mut Parts, app: &AppState) -> Result<Actor, ApiError> {
    let from_query = parts.uri.query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    });
    match from_query {
        Some(token) if !parts.headers.contains_key(header::AUTHORIZATION) => {
            app.keys.verify(token.trim())
        }
        _ => {
            use axum::extract::FromRequestParts;
            let Caller(actor) = Caller::from_request_parts(parts, app).await?;
            Ok(actor)
        }
    }
}

async fn websocket(
    State(app): State<AppState>,
    mut parts: Parts,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let actor = match handshake_caller(&mut parts, &app).await {
        Ok(actor) => actor,
        Err(err) => return err.into_response(),
    };
    let Some(hub) = app.live.clone() else {
        return not_running();
    };
    let Some(admission) = hub.admit(actor.user_id) else {
        return ApiError::TooManyConnections {
            limit: hub.config().sockets_per_user,
        }
        .into_response();
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::BadRequest(format!(
                "this endpoint speaks WebSocket only: {}",
                rejection.body_text()
            ))
            .into_response()
        }
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        // Each frame goes out as soon as it is sent, so no write buffer is
        // kept between frames; a frame stuck behind a stalled client is
        // bounded by the write timeout.
        .write_buffer_size(0)
        // Frames past the limit are closed with a clear code by the session;
        // only far larger ones are cut off by the protocol layer itself.
        .max_message_size(4 * MAX_CLIENT_FRAME)
        .max_frame_size(4 * MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            session(socket, app, hub, actor).await;
            drop(admission);
        })
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    /// Post a message, as `POST /chats/{id}/messages` does.
    SendMessage {
        chat_id: Uuid,
        /// The client's own id for this message: also its idempotency key, so
        /// a resend after a lost ack stores nothing new.
        client_id: String,
        body: String,
    },
    /// Tell the chat's other members that the caller is typing; never
    /// stored, and not answered unless refused.
    Typing { chat_id: Uuid },
}

/// What the server sends besides event frames.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame {
    /// The socket is live: every event of the caller's chats after
    /// `position` follows.
    Ready { position: i64 },
    /// The message is stored.
    Ack {
        client_id: String,
        message_id: Uuid,
        seq: u64,
    },
    /// A frame could not be carried out; the socket stays open.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        status: u16,
        detail: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        errors: Vec<FieldError>,
    },
}

#[derive(Debug, Serialize)]
struct FieldError {
    field: String,
    message: String,
}

impl ServerFrame {
    fn text(&self) -> Utf8Bytes {
        // Plain strings and numbers always serialize.
        serde_json::to_string(self).unwrap_or_default().into()
    }

    fn error(client_id: Option<String>, err: ApiError) -> Self {
        let status = err.status_code();
        let errors = match &err {
            ApiError::Invalid(errors) => errors
                .iter()
                .map(|e| FieldError {
                    field: e.field.clone(),
                    message: e.message.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let detail = if status.is_server_error() {
            tracing::warn!(error = %err, source = ?err, "a live command failed");
            match err {
                ApiError::Command(CommandError::Unavailable(_)) => {
                    "the database is unavailable; nothing was stored, try again shortly".to_owned()
                }
                _ => "an internal error occurred; nothing was stored".to_owned(),
            }
        } else {
            err.to_string()
        };
        Self::Error {
            client_id,
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

/// Milliseconds since the session began, shared by its reader and writer.
struct Clock {
    start: Instant,
    last_heard: AtomicU64,
}

impl Clock {
    fn heard(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard.store(now, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.last_heard.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(heard)
    }
}

/// One socket: the hub's frames out, the client's commands in.
async fn session(socket: WebSocket, app: AppState, hub: Arc<LiveHub>, actor: Actor) {
    let (mut sink, mut incoming) = socket.split();
    let connection = match connect(&app, &hub, actor).await {
        Ok(connection) => connection,
        Err(err) => {
            tracing::warn!(%err, "cannot register a live connection");
            let frame = ServerFrame::Error {
                client_id: None,
                status: 503,
                detail: "live updates are unavailable right now; reconnect shortly".to_owned(),
                errors: Vec::new(),
            };
            let _ = sink.send(Message::Text(frame.text())).await;
            let _ = sink.send(close(CLOSE_TRY_AGAIN, "try again later")).await;
            return;
        }
    };
    if sink
        .send(Message::Text(
            ServerFrame::Ready {
                position: connection.position,
            }
            .text(),
        ))
        .await
        .is_err()
    {
        return;
    }
    let config = hub.config().clone();
    let clock = Clock {
        start: Instant::now(),
        last_heard: AtomicU64::new(0),
    };
    let (replies, mut reply_frames) = tokio::sync::mpsc::channel::<Utf8Bytes>(REPLY_BUFFER);
    let connection_id = connection.id;
    let mut frames = connection.frames;
    let mut kicked = connection.kicked;
    let closed = hub.closed();

    let writer = async {
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        tokio::pin!(closed);
        loop {
            let message = tokio::select! {
                kick = &mut kicked => {
                    if let Ok(Kick::TooSlow) = kick {
                        metrics::counter!("herald_websocket_slow_disconnects_total").increment(1);
                    }
                    // A client that does not read may never take this frame.
                    let _ = tokio::time::timeout(
                        config.write_timeout,
                        sink.send(close(CLOSE_TOO_SLOW, "too slow to keep up")),
                    )
                    .await;
                    return;
                }
                () = &mut closed => {
                    let _ = tokio::time::timeout(
                        config.write_timeout,
                        sink.send(close(CLOSE_GOING_AWAY, "server shutting down")),
                    )
                    .await;
                    return;
                }
                frame = frames.recv() => match frame {
                    Some(frame) => Message::Text(frame),
                    None => return,
                },
                reply = reply_frames.recv() => match reply {
                    Some(reply) => Message::Text(reply),
                    None => return,
                },
                _ = ping.tick() => {
                    if clock.silent_for() > config.ping_interval * 3 {
                        return;
                    }
                    Message::Ping(axum::body::Bytes::new())
                }
            };
            match tokio::time::timeout(config.write_timeout, sink.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    metrics::counter!("herald_websocket_slow_disconnects_total").increment(1);
                    return;
                }
            }
        }
    };

    let reader = async {
        while let Some(Ok(message)) = incoming.next().await {
            clock.heard();
            let reply = match message {
                Message::Text(text) if text.len() > MAX_CLIENT_FRAME => return true,
                Message::Text(text) => {
                    match handle_frame(&app, &hub, connection_id, actor, text.as_str()).await {
                        Some(reply) => reply,
                        None => continue,
                    }
                }
                Message::Binary(_) => ServerFrame::Error {
                    client_id: None,
                    status: 400,
                    detail: "frames are JSON text".to_owned(),
                    errors: Vec::new(),
                },
                Message::Close(_) => return false,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if replies.send(reply.text()).await.is_err() {
                return false;
            }
        }
        false
    };

    let too_big = tokio::select! {
        () = writer => false,
        too_big = reader => too_big,
    };
    if too_big {
        let _ = tokio::time::timeout(
            config.write_timeout,
            sink.send(close(CLOSE_TOO_BIG, "a frame is larger than 64 KiB")),
        )
        .await;
    }
}

/// Registers the caller's socket with the hub, hearing of new bookings if
/// they do.
async fn connect(
    app: &AppState,
    hub: &LiveHub,
    actor: Actor,
) -> Result<Connection, Box<dyn std::error::Error + Send + Sync>> {
    let hears_new_bookings = notifications::hears_new_bookings(app, actor).await?;
    Ok(hub.connect(actor.user_id, hears_new_bookings).await?)
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Carries out one client frame of the socket `connection` and answers it,
/// if it needs an answer.
async fn handle_frame(
    app: &AppState,
    hub: &LiveHub,
    connection: u64,
    actor: Actor,
    text: &str,
) -> Option<ServerFrame> {
    let raw: serde_json::Value = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            return Some(ServerFrame::error(
                None,
                ApiError::BadRequest(format!("the frame is not JSON: {err}")),
            ))
        }
    };
    let client_id = raw
        .get("client_id")
        .and_then(|id| id.as_str())
        .map(str::to_owned);
    let reply = match serde_json::from_value::<ClientFrame>(raw) {
        Ok(ClientFrame::SendMessage {
            chat_id,
            client_id,
            body,
        }) => match send_message(app, actor, chat_id, &client_id, body).await {
            Ok(ack) => ack,
            Err(err) => ServerFrame::error(Some(client_id), err),
        },
        Ok(ClientFrame::Typing { chat_id }) => {
            return match hub.typing(connection, actor.user_id, chat_id).await {
                Ok(()) => None,
                Err(err) => Some(typing_refused(err)),
            }
        }
        Err(err) => ServerFrame::error(
            client_id,
            ApiError::BadRequest(format!("the frame is not valid: {err}")),
        ),
    };
    Some(reply)
}

/// The error frame of a typing indicator that did not go out.
fn typing_refused(err: LiveError) -> ServerFrame {
    match err {
        LiveError::NotAMember => ServerFrame::error(
            None,
            ApiError::Forbidden("only the chat's members may say they are typing in it"),
        ),
        err => {
            tracing::warn!(%err, "a typing indicator did not go out");
            ServerFrame::Error {
                client_id: None,
                status: 503,
                detail: "live updates are unavailable right now; try again shortly".to_owned(),
                errors: Vec::new(),
            }
        }
    }
}

/// The same SendMessage command as `POST /chats/{id}/messages`, keyed by the
/// caller's `client_id` so that a resend answers the first outcome.
async fn send_message(
    app: &AppState,
    actor: Actor,
    chat_id: Uuid,
    client_id: &str,
    body: String,
) -> Result<ServerFrame, ApiError> {
    let mut fields = crate::command::Fields::default();
    let valid_id = fields.check(
        Some(client_id)
            .filter(|id| commands::is_valid_key_length(id))
            .ok_or_else(|| {
                domain::ValidationError::new(
                    "client_id",
                    format!("must be 1 to {} characters", commands::MAX_KEY_LEN),
                )
            }),
    );
    let hash = request_hash(
        "WS",
        &format!("/api/v1/chats/{chat_id}/messages"),
        body.as_bytes(),
    );
    let text = fields.check(MessageBody::parse(body));
    let body = fields.finish(valid_id.and(text))?;
    // A frame that issues a command spends the caller's REST bucket.
    if let Some(limits) = &app.limits {
        limits.spend(actor.user_id)?;
    }
    let metadata = Metadata::for_request(actor, Uuid::now_v7().to_string()).with_idempotency(Some(
        IdempotencyKey {
            key: format!("ws:{client_id}"),
            request_hash: hash,
        },
    ));
    let message_id = Uuid::now_v7();
    let command = ChatCommand::SendMessage {
        actor,
        message_id,
        body: Some(body),
        attachments: Vec::new(),
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    let (message_id, seq) = committed
        .events
        .iter()
        .find_map(|event| match event {
            ChatEvent::MessageSent {
                message_id, seq, ..
            } => Some((*message_id, *seq)),
            _ => None,
        })
        .unwrap_or((message_id, committed.version));
    Ok(ServerFrame::Ack {
        client_id: client_id.to_owned(),
        message_id,
        seq,
    })
}

/// The SSE stream of a dashboard: every entry the caller may see, each with
/// `id:` = its log position. `Last-Event-ID` resumes after that position from
/// the Postgres log, then follows the hub without a gap or a repeat.
async fn stream(
    State(app): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(hub) = app.live.clone() else {
        return Ok(not_running());
    };
    let resume = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|value| value.trim().parse::<i64>().ok())
                .filter(|position| *position >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Last-Event-ID must be a position this stream sent".to_owned(),
                    )
                })
        })
        .transpose()?;
    // Subscribed before the head is read, so nothing falls in between.
    let live = hub.subscribe();
    let after = match resume {
        Some(position) => position,
        None => log::head(hub.pool()).await?,
    };
    let feed = Feed {
        hub: hub.clone(),
        audience: Audience::new(actor),
        last: after,
        live,
        backlog: std::collections::VecDeque::new(),
        replaying: true,
    };
    let closed = hub.closed();
    let events = futures::stream::unfold(feed, |mut feed| async move {
        match feed.next().await {
            Ok(Some(event)) => Some((Ok::<Event, Infallible>(event), feed)),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%err, "an SSE stream stopped; the client resumes with Last-Event-ID");
                None
            }
        }
    });
    let hears_new_bookings = notifications::hears_new_bookings(&app, actor).await?;
    let notices = futures::stream::unfold(hub.subscribe_notices(), move |mut notices| async move {
        loop {
            match notices.recv().await {
                Ok(notice) if notice.is_for(actor.user_id, hears_new_bookings) => {
                    return Some((Ok(notice_event(&notice)), notices));
                }
                // A stream too slow to take every notification loses some;
                // the feed (`GET /notifications`) still holds them.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    // The caller is online while the stream is open.
    let present = hub.presence().arrive(actor.user_id);
    let events = futures::stream::select(events, notices)
        .take_until(closed)
        .map(move |event| {
            let _online = &present;
            event
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One SSE stream's position: replaying the Postgres log, then following the
/// hub, dropping what it already sent and reading from the log what it missed.
struct Feed {
    hub: Arc<LiveHub>,
    audience: Audience,
    /// The last position considered (sent or not visible).
    last: i64,
    live: broadcast::Receiver<Arc<LogEntry>>,
    backlog: std::collections::VecDeque<Arc<LogEntry>>,
    /// Reading the log until it is exhausted, instead of the hub.
    replaying: bool,
}

/// The body of one SSE event.
#[derive(Serialize)]
struct StreamEvent<'a> {
    position: i64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    event_type: &'a str,
    event: &'a serde_json::Value,
    recorded_at: chrono::DateTime<Utc>,
}

impl Feed {
    async fn next(&mut self) -> Result<Option<Event>, AudienceError> {
        loop {
            if let Some(entry) = self.backlog.pop_front() {
                if entry.position != self.last + 1 {
                    // Older than what was sent, or past a gap the log fills.
                    if entry.position > self.last + 1 {
                        self.backlog.clear();
                        self.replaying = true;
                    }
                    continue;
                }
                self.last = entry.position;
                if self.audience.sees(self.hub.pool(), &entry).await? {
                    return Ok(Some(event_for(&entry)));
                }
                continue;
            }
            if self.replaying {
                let entries = log::read_after(self.hub.pool(), self.last, REPLAY_BATCH).await?;
                self.replaying = entries.len() as i64 == REPLAY_BATCH;
                self.backlog.extend(entries.into_iter().map(Arc::new));
                continue;
            }
            match self.live.recv().await {
                Ok(entry) => self.backlog.push_back(entry),
                Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

/// A notification as an SSE event: named `notification`, with no `id:`, so
/// that `Last-Event-ID` still names the last log position sent.
fn notice_event(notice: &Notice) -> Event {
    Event::default()
        .event("notification")
        .data(notice.frame.as_str())
}

fn event_for(entry: &LogEntry) -> Event {
    let body = StreamEvent {
        position: entry.position,
        aggregate_type: &entry.aggregate_type,
        aggregate_id: &entry.aggregate_id,
        event_type: &entry.event_type,
        event: entry
            .payload
            .get(&entry.event_type)
            .unwrap_or(&entry.payload),
        recorded_at: entry.recorded_at,
    };
    Event::default()
        .id(entry.position.to_string())
        .event(&entry.event_type)
        .json_data(body)
        .unwrap_or_default()
}
