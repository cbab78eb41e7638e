//! How Herald notifies people: who hears of new bookings, and how long a
//! chat message may stay unread before its reader is told.

use std::time::Duration;

use clap::Args;
use domain::values::Role;

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
}

/// Settings of notifications, checked.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Roles told of every new booking.
    pub new_bookings_audience: Vec<Role>,
    /// How long a chat message may stay unread before its reader is told.
    pub unread_after: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            new_bookings_audience: vec![Role::Doctor, Role::Admin],
            unread_after: Duration::from_secs(60),
        }
    }
}

impl From<&NotifyArgs> for NotifyConfig {
    fn from(args: &NotifyArgs) -> Self {
        Self {
            new_bookings_audience: args.notify_new_bookings.clone(),
            unread_after: args.notify_unread_after.into(),
        }
    }
}

fn role(value: &str) -> Result<Role, String> {
    value
        .parse()
        .map_err(|err: domain::ValidationError| err.message)
}
