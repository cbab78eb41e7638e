//! Notifications pushed live: each process follows the notifications read
//! model from the head of the log at its start, woken by the projection's
//! announcement of every batch that adds some (and looking once a second
//! besides), and hands each to the hub for its recipient's sockets and to
//! the SSE streams.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use projections::notifications::{self, Fresh, NotificationRow, WAKE_CHANNEL};
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::HubCommand;

/// Notifications read at once.
const BATCH: i64 = 500;
/// How long announcements gather before the follower reads what they
/// announced.
const GATHER: Duration = Duration::from_millis(20);
/// How long the follower waits for an announcement before looking anyway.
const LOOK_ANYWAY: Duration = Duration::from_secs(1);

/// A notification on its way to the sockets and streams of its recipient.
#[derive(Debug)]
pub struct Notice {
    /// Whose it is; none for everyone who hears of new bookings.
    pub user_id: Option<Uuid>,
    /// The frame, `{"type": "notification", …}`, serialized once.
    pub frame: Utf8Bytes,
}

impl Notice {
    /// Whether a connection of `user`, who does or does not hear of new
    /// bookings, gets it.
    pub fn is_for(&self, user: Uuid, hears_new_bookings: bool) -> bool {
        match self.user_id {
            Some(recipient) => recipient == user,
            None => hears_new_bookings,
        }
    }
}

/// The frame of a notification.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    notification: &'a NotificationRow,
}

impl From<Fresh> for Notice {
    fn from(fresh: Fresh) -> Self {
        let frame = Frame {
            kind: "notification",
            notification: &fresh.notification,
        };
        // A struct of strings, numbers and ids always serializes.
        let frame = serde_json::to_string(&frame).unwrap_or_default();
        Self {
            user_id: fresh.user_id,
            frame: frame.into(),
        }
    }
}

/// Follows the notifications until `stop` completes, waiting out Postgres
/// failures.
pub(super) async fn follow(
    pool: PgPool,
    hub: mpsc::WeakSender<HubCommand>,
    streams: broadcast::Sender<Arc<Notice>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = &mut stop => return,
            Err(err) = push(&pool, &hub, &streams, &mut last) => {
                tracing::warn!(%err, "live notifications paused");
            }
        }
        failures = (failures + 1).min(6);
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_millis(50 << failures)) => {}
        }
    }
}

/// Pushes every notification after `last` (the newest at the start when
/// none), as they come.
async fn push(
    pool: &PgPool,
    hub: &mpsc::WeakSender<HubCommand>,
    streams: &broadcast::Sender<Arc<Notice>>,
    last: &mut Option<i64>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(WAKE_CHANNEL).await?;
    // What the log held when the process started is history, not news,
    // even while the projection is still on its way through it.
    let mut after = match *last {
        Some(after) => after,
        None => herald_nats::log::head(pool).await?,
    };
    *last = Some(after);
    loop {
        loop {
            let fresh = notifications::after(pool, after, BATCH).await?;
            let Some(newest) = fresh.last().map(|f| f.notification.seq) else {
                break;
            };
            let Some(hub) = hub.upgrade() else {
                return Ok(());
            };
            for notice in fresh {
                let notice = Arc::new(Notice::from(notice));
                // No SSE stream listening is fine.
                let _ = streams.send(notice.clone());
                if hub.send(HubCommand::Notice(notice)).await.is_err() {
                    return Ok(());
                }
            }
            after = newest;
            *last = Some(after);
        }
        if let Ok(Err(err)) = tokio::time::timeout(LOOK_ANYWAY, listener.recv()).await {
            return Err(err);
        }
        // Under load every batch of the projection announces itself; those
        // of a moment are read together.
        tokio::time::sleep(GATHER).await;
    }
}
