//! Herald's write side.
//!
//! Commands are decided by the pure aggregates of [`domain`], kept in memory
//! while in use, and their events are committed to the Postgres event store in
//! group commits, together with the metadata every event carries: who acted,
//! in which role, and which request or event caused it. Version conflicts are retried here, idempotency keys are
//! honoured here, and store failures are told apart from rejected commands.
//!
//! The payment gateway port and the booking ⇄ payment process manager live here
//! too: both turn outside facts and events into commands.

pub mod accounts;
mod append;
pub mod attachments;
mod cache;
mod error;
mod executor;
mod facts;
pub mod gateway;
mod idempotency;
mod load;
mod metadata;
pub mod payments;
pub mod process_manager;
pub mod reminders;
pub mod thumbnails;
mod token;

pub use error::{database_error, CommandError};
pub use executor::{Committed, NewId, WriteSide};
pub use idempotency::{is_valid_key_length, request_hash, IdempotencyKey, MAX_KEY_LEN};
pub use metadata::Metadata;
pub use process_manager::PaymentProcess;
pub use reminders::Reminders;
pub use thumbnails::Thumbnails;
pub use token::ConsistencyToken;
