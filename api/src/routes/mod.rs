//! The HTTP routes, one module per aggregate.

pub mod attachments;
pub mod audit;
pub mod auth;
pub mod bookings;
pub mod chats;
pub mod hooks;
pub mod live;
pub mod notifications;
pub mod payments;
pub mod reads;
pub mod users;
