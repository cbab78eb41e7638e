//! Herald's JetStream transport.
//!
//! The relay tails the Postgres event log in commit order, gives every event its
//! dense `position`, and publishes it to the stream of the configured prefix on
//! `<prefix>.events.<AggregateType>.<aggregate_id>`. Projection workers and
//! process managers follow that stream through one loop ([`follower`]); [`log`]
//! reads the same entries straight from Postgres, which stays the truth when
//! NATS lost something. [`locks`] lists every advisory lock Herald takes.
//! [`trace`] carries a command's trace context along all of them.

pub mod follower;
pub mod jetstream;
pub mod locks;
pub mod log;
pub mod relay;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use jetstream::{connect, Topology};
pub use log::LogEntry;
pub use relay::{Relay, RelayStatus};
