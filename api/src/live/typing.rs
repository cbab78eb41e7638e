//! Typing indicators: a member's "typing" goes to the other members' sockets
//! on every instance over a plain NATS subject ([`Topology::typing`]), never
//! stored: one that is lost matters no more than a missed glance.
//!
//! The message on the subject is the frame sockets get, `{ "type":
//! "typing", "chat_id", "user_id" }`; each instance subscribes to every
//! chat's subject once and routes a frame to the sockets of the chat's
//! members but the typist.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use herald_nats::Topology;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::HubCommand;

/// Typists remembered before those quiet for longer than the interval are
/// forgotten, so the pace keeps bounded memory.
const REMEMBERED: usize = 4096;
/// The longest pause before subscribing again after a failure.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A typing indicator, as published and as sockets get it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Typing {
    #[serde(rename = "type")]
    kind: String,
    pub(super) chat_id: Uuid,
    pub(super) user_id: Uuid,
}

impl Typing {
    pub(super) fn new(chat_id: Uuid, user_id: Uuid) -> Self {
        Self {
            kind: "typing".to_owned(),
            chat_id,
            user_id,
        }
    }

    /// The indicator as JSON text.
    pub(super) fn to_json(&self) -> String {
        // A string and two ids always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// At most one indicator per user and chat per interval from this instance;
/// the others are dropped.
pub(super) struct Pace {
    interval: Duration,
    last: Mutex<HashMap<(Uuid, Uuid), Instant>>,
}

impl Pace {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::default(),
        }
    }

    /// Whether `user` may say they type in `chat` now; counts it if so.
    pub(super) fn allows(&self, user: Uuid, chat: Uuid) -> bool {
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(at) = last.get(&(user, chat)) {
            if now.duration_since(*at) < self.interval {
                return false;
            }
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < self.interval);
        }
        last.insert((user, chat), now);
        true
    }
}

/// Hands every typing indicator published by any instance to the hub until
/// `stop` completes, subscribing again after a failure.
pub(super) async fn follow(
    client: async_nats::Client,
    topology: Topology,
    hub: mpsc::WeakSender<HubCommand>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut failures = 0u32;
    loop {
        match client.subscribe(topology.all_typing()).await {
            Ok(mut subscriber) => loop {
                let message = tokio::select! {
                    () = &mut stop => return,
                    message = subscriber.next() => message,
                };
                let Some(message) = message else { break };
                failures = 0;
                let Ok(typing) = serde_json::from_slice::<Typing>(&message.payload) else {
                    tracing::debug!("undecodable typing indicator");
                    continue;
                };
                // Written anew, so that sockets get exactly the documented frame.
                let frame = Typing::new(typing.chat_id, typing.user_id).to_json();
                let Some(hub) = hub.upgrade() else { return };
                let command = HubCommand::Typing {
                    chat: typing.chat_id,
                    user: typing.user_id,
                    frame: Utf8Bytes::from(frame),
                };
                if hub.send(command).await.is_err() {
                    return;
                }
            },
            Err(err) => tracing::warn!(%err, "cannot follow typing indicators"),
        }
        failures = (failures + 1).min(7);
        let pause = Duration::from_millis(40 << failures).min(MAX_RETRY);
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_indicator_per_user_and_chat_goes_out_per_interval() {
        let pace = Pace::new(Duration::from_millis(50));
        let (user, other, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(pace.allows(user, chat));
        assert!(!pace.allows(user, chat));
        assert!(
            pace.allows(other, chat),
            "each user has a pace of their own"
        );
        assert!(pace.allows(user, Uuid::new_v4()), "and each chat");
        std::thread::sleep(Duration::from_millis(60));
        assert!(pace.allows(user, chat));
    }

    #[test]
    fn the_indicator_is_the_documented_frame() {
        let (chat, user) = (Uuid::new_v4(), Uuid::new_v4());
        let frame: serde_json::Value =
            serde_json::from_str(&Typing::new(chat, user).to_json()).unwrap_or_default();
        assert_eq!(
            frame,
            serde_json::json!({ "type": "typing", "chat_id": chat, "user_id": user })
        );
    }
}
