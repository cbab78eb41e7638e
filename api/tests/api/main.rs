//! Herald's HTTP and process tests, against real Postgres and NATS: one
//! binary, so the suite links once.
#![allow(clippy::unwrap_used)]

mod common;

mod accounts;
mod attachments;
mod audit;
mod bookings;
mod chats;
mod concurrency;
mod dashboard;
mod email;
mod http_errors;
mod idempotency;
mod live;
mod monitoring;
mod notification_webhooks;
mod notifications;
mod openapi;
mod operations;
mod outage;
mod payment_flow;
mod payments;
mod pipeline;
mod presence;
mod reads;
mod replay;
mod traces;
