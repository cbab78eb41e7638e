//! Herald's JetStream transport.
//!
//! The relay tails the Postgres event log in commit order, gives every event its
//! dense `position`, and publishes it to the stream of the configured prefix on
//! `<prefix>.events.<AggregateType>.<aggregate_id>`. Projection workers and
//! process managers follow that stream through one loop ([`follower`]); [`log`]
//! reads the same entries straight from Postgres, which stays the truth when
//! NATS lost something. [`locks`] lists every advisory lock Herald takes.

pub mod chain;
pub mod follower;
pub mod locks;
pub mod log;
pub mod relay;
#[cfg(feature = "testing")]
pub mod testing;
mod topology;

pub use log::LogEntry;
pub use relay::{Relay, RelayStatus};
pub use topology::{connect, Topology};

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
}

/// The Postgres channel the write side notifies after commits so the relay wakes
/// at once instead of at its next poll.
pub const COMMIT_CHANNEL: &str = "herald_events_committed";
