//! The JetStream side of the log: the stream and consumer definitions and
//! subjects of one deployment ([`Topology`]), the connection, and the headers
//! every published entry carries.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;

use crate::LogEntry;

/// Names of the stream and subjects of one Herald deployment. Several deployments
/// can share one NATS by using different prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl Topology {
    /// The topology for a prefix; it must be a valid subject token.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream that carries every event of this deployment.
    pub fn stream_name(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix
                .replace(['.', '*', '>', ' '], "_")
                .to_uppercase()
        )
    }

    /// The subject one aggregate's events are published on.
    pub fn subject(&self, aggregate_type: &str, aggregate_id: &str) -> String {
        format!("{}.events.{aggregate_type}.{aggregate_id}", self.prefix)
    }

    /// The subjects of every event of this deployment.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The subjects of one aggregate type's events.
    pub fn events_of(&self, aggregate_type: &str) -> String {
        format!("{}.events.{aggregate_type}.*", self.prefix)
    }

    /// The core NATS subject (never stored) a chat's typing indicators are
    /// published on.
    pub fn typing(&self, chat_id: &str) -> String {
        format!("{}.typing.{chat_id}", self.prefix)
    }

    /// The subjects of every chat's typing indicators.
    pub fn all_typing(&self) -> String {
        format!("{}.typing.*", self.prefix)
    }

    /// The key-value bucket of who is online: one key per user and Herald
    /// instance, kept alive by the instance's heartbeats and gone a
    /// time-to-live after the last one.
    pub fn presence_bucket(&self) -> String {
        format!("{}_PRESENCE", self.bucket_base())
    }

    /// The key-value bucket of when each user was last seen online, kept
    /// after their presence expires.
    pub fn last_seen_bucket(&self) -> String {
        format!("{}_LAST_SEEN", self.bucket_base())
    }

    /// The prefix as a bucket name may hold it (letters, digits, `_`, `-`).
    fn bucket_base(&self) -> String {
        self.prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Creates the stream if it does not exist yet (file-backed, keeping every
    /// event) and returns it.
    pub async fn ensure_stream(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
        jetstream
            .get_or_create_stream(stream::Config {
                name: self.stream_name(),
                subjects: vec![self.all_events()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: DUPLICATE_WINDOW,
                allow_direct: true,
                ..Default::default()
            })
            .await
    }

    /// Every entry published to this deployment's stream from now on, in
    /// stream order, through an ephemeral ordered consumer (created with the
    /// stream if it is missing): what a process follows the log live with.
    /// It recreates itself after a gap; positions tell what it skipped.
    pub async fn new_entries(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<jetstream::consumer::pull::Ordered, async_nats::Error> {
        let stream = self.ensure_stream(jetstream).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: self.all_events(),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        Ok(consumer.messages().await?)
    }
}

/// Creates the key-value bucket `bucket` if it does not exist yet, or brings
/// an existing one's `max_age` (zero: none) and storage to these, and opens
/// it. The bucket's stream is defined here rather than by the client's
/// `create_key_value`, which asks the server for account details that NATS
/// 2.9 answers in a shape the client does not read; the definition is the
/// one every NATS client gives a bucket keeping one value per key.
pub async fn ensure_key_value(
    jetstream: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    storage: stream::StorageType,
) -> Result<jetstream::kv::Store, async_nats::Error> {
    jetstream
        .create_or_update_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(jetstream.get_key_value(bucket).await?)
}

/// Connects to NATS, retrying in the background for as long as it takes: Herald
/// keeps accepting commands while NATS is away.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let named = url.to_owned();
    async_nats::ConnectOptions::new()
        .name("herald")
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let url = named.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(nats_url = url, "NATS connected")
                    }
                    event => tracing::warn!(
                        nats_url = url,
                        %event,
                        "NATS (HERALD_NATS_URL): {event}"
                    ),
                }
            }
        })
        .connect(url)
        .await
}

/// Header names carried by every published event.
pub mod headers {
    /// The event's dense log position.
    pub const POSITION: &str = "Herald-Position";
    /// The event's type, e.g. `MessageSent`.
    pub const EVENT_TYPE: &str = "Herald-Event-Type";
    /// The version of the event's payload shape.
    pub const EVENT_VERSION: &str = "Herald-Event-Version";
    /// The request that set the event in motion.
    pub const CORRELATION_ID: &str = "Herald-Correlation-Id";
    /// The W3C trace context of the command that stored the event, when it
    /// was traced.
    pub const TRACEPARENT: &str = crate::trace::TRACEPARENT;
}

/// The headers published with `entry`.
pub(crate) fn headers_of(entry: &LogEntry) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(headers::POSITION, entry.position.to_string().as_str());
    headers.insert(headers::EVENT_TYPE, entry.event_type.as_str());
    headers.insert(headers::EVENT_VERSION, entry.event_version.as_str());
    if let Some(correlation_id) = entry.correlation_id() {
        headers.insert(headers::CORRELATION_ID, correlation_id);
    }
    if let Some(traceparent) = entry.traceparent() {
        headers.insert(headers::TRACEPARENT, traceparent);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let topology = Topology::new("herald");
        assert_eq!(topology.stream_name(), "HERALD_EVENTS");
        assert_eq!(topology.subject("Chat", "c1"), "herald.events.Chat.c1");
        assert_eq!(topology.all_events(), "herald.events.>");
        assert_eq!(topology.typing("c1"), "herald.typing.c1");
        assert_eq!(topology.presence_bucket(), "HERALD_PRESENCE");
        assert_eq!(
            Topology::new("acme.prod").last_seen_bucket(),
            "ACME_PROD_LAST_SEEN"
        );
    }
}
