//! Herald's domain: the aggregates, their commands and events, the value
//! types they are built from, and the rules that decide between them.
//!
//! Everything here is pure and synchronous. Decisions depend only on an
//! aggregate's state and the command, which carries any outside facts such
//! as the current time, so the rules can be tested without infrastructure.

pub mod access;
pub mod attachment;
pub mod booking;
pub mod chat;
mod error;
pub mod payment;
pub mod upcast;
pub mod user;
pub mod values;

pub use error::{
    BookingAction, DomainError, ErrorKind, PaymentAction, Permission, ValidationError,
};
