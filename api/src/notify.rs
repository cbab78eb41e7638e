//! How Herald notifies people: who hears of new bookings, how long a chat
//! message may stay unread before its reader is told, and how webhooks are
//! posted to.

use std::time::Duration;

use clap::Args;
use domain::values::Role;

use crate::deliveries::Retry;

/// Settings of notifications, as `herald up` reads them.
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Roles told of every new booking waiting for a doctor
    /// (comma-separated: patient, doctor, admin, auditor); none when empty.
    #[arg(
        long,
        env = "HERALD_NOTIFY_NEW_BOOKINGS",
        value_delimiter = ',',
        default_value = "doctor,admin",
        value_parser = role
    )]
    pub notify_new_bookings: Vec<Role>,

    /// How long a chat message may stay unread before its reader is
    /// notified of it, with every other one they have not read by then.
    #[arg(long, env = "HERALD_NOTIFY_UNREAD_AFTER", default_value = "1m")]
    pub notify_unread_after: humantime::Duration,

    /// The longest a webhook may take to answer a delivery before the
    /// attempt counts as failed.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT", default_value = "10s")]
    pub webhook_timeout: humantime::Duration,

    /// Attempts at a delivery to a webhook before it is set aside with its
    /// last error.
    #[arg(long, env = "HERALD_WEBHOOK_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_attempts: u32,

    /// The pause after a delivery's first failed attempt; each further
    /// failure doubles it, up to `HERALD_WEBHOOK_BACKOFF_MAX`.
    #[arg(long, env = "HERALD_WEBHOOK_BACKOFF", default_value = "10s")]
    pub webhook_backoff: humantime::Duration,

    /// The longest pause between two attempts at a delivery.
    #[arg(long, env = "HERALD_WEBHOOK_BACKOFF_MAX", default_value = "1h")]
    pub webhook_backoff_max: humantime::Duration,
    /// Whether webhooks may be at loopback, private, link-local and other
    /// addresses that are not public: for development, and for receivers
    /// inside the deployment's own network.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_PRIVATE_ADDRESSES",
        default_value_t = false
    )]
    pub webhook_private_addresses: bool,
}

/// Settings of notifications, checked.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Roles told of every new booking.
    pub new_bookings_audience: Vec<Role>,
    /// How long a chat message may stay unread before its reader is told.
    pub unread_after: Duration,
    /// The longest a webhook may take to answer.
    pub webhook_timeout: Duration,
    /// How failed deliveries to webhooks are tried again.
    pub webhook_retry: Retry,
    /// Whether webhooks may be at addresses that are not public.
    pub webhook_private_addresses: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            new_bookings_audience: vec![Role::Doctor, Role::Admin],
            unread_after: Duration::from_secs(60),
            webhook_timeout: Duration::from_secs(10),
            webhook_retry: Retry {
                attempts: 8,
                first_pause: Duration::from_secs(10),
                max_pause: Duration::from_secs(3600),
            },
            webhook_private_addresses: false,
        }
    }
}

impl From<&NotifyArgs> for NotifyConfig {
    fn from(args: &NotifyArgs) -> Self {
        Self {
            new_bookings_audience: args.notify_new_bookings.clone(),
            unread_after: args.notify_unread_after.into(),
            webhook_timeout: args.webhook_timeout.into(),
            webhook_retry: Retry {
                attempts: args.webhook_attempts,
                first_pause: args.webhook_backoff.into(),
                max_pause: args.webhook_backoff_max.into(),
            },
            webhook_private_addresses: args.webhook_private_addresses,
        }
    }
}

fn role(value: &str) -> Result<Role, String> {
    value
        .parse()
        .map_err(|err: domain::ValidationError| err.message)
}
