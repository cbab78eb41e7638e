//! Notifications sent by e-mail: the e-mail channel of
//! [`crate::deliveries`]. Who gets an e-mail is [`recipients`]; each e-mail
//! is one line ([`NotificationKind::summary`]) and a link to the app, never
//! what the notification is about in detail ([`smtp`]).
//!
//! [`NotificationKind::summary`]: domain::values::NotificationKind::summary

mod recipients;
mod smtp;

use std::time::Duration;

use clap::Args;
use domain::values::Role;
use lettre::message::Mailbox;
use projections::notifications::Fresh;
use secrecy::SecretString;
use sqlx::PgConnection;

use crate::deliveries::{Channel, Due, Failure, Retry, Target};
use smtp::Smtp;

/// Settings of e-mail, as `herald up` reads them.
#[derive(Debug, Clone, Args)]
pub struct EmailArgs {
    /// The SMTP server notifications are sent through, such as
    /// `smtp://127.0.0.1:2525`, `smtp://user:password@host:587?tls=required`
    /// (STARTTLS) or `smtps://user:password@host:465`; no e-mail is sent
    /// without it.
    #[arg(long, env = "HERALD_SMTP_URL", hide_env_values = true, value_parser = crate::config::secret)]
    pub smtp_url: Option<SecretString>,

    /// The sender of notifications, such as `Herald <noreply@herald.example>`;
    /// required with `HERALD_SMTP_URL`.
    #[arg(long, env = "HERALD_SMTP_FROM")]
    pub smtp_from: Option<Mailbox>,

    /// The address of the app people read their notifications in, which
    /// e-mails link to (`<HERALD_APP_URL>/notifications`). Defaults to
    /// Herald's public URL.
    #[arg(long, env = "HERALD_APP_URL")]
    pub app_url: Option<url::Url>,

    /// The longest the SMTP server may take to answer one step of a
    /// conversation before the attempt counts as failed.
    #[arg(long, env = "HERALD_SMTP_TIMEOUT", default_value = "30s")]
    pub smtp_timeout: humantime::Duration,

    /// Attempts at an e-mail before it is set aside with its last error.
    #[arg(long, env = "HERALD_SMTP_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub smtp_attempts: u32,

    /// The pause after an e-mail's first failed attempt; each further failure
    /// doubles it, up to `HERALD_SMTP_BACKOFF_MAX`.
    #[arg(long, env = "HERALD_SMTP_BACKOFF", default_value = "30s")]
    pub smtp_backoff: humantime::Duration,

    /// The longest pause between two attempts at an e-mail.
    #[arg(long, env = "HERALD_SMTP_BACKOFF_MAX", default_value = "1h")]
    pub smtp_backoff_max: humantime::Duration,
}

/// Settings of e-mail, checked.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// The SMTP server; it may carry credentials, so it is never printed.
    pub smtp_url: SecretString,
    /// The sender.
    pub from: Mailbox,
    /// The app e-mails link to.
    pub app_url: String,
    /// The longest one step of an SMTP conversation may take.
    pub timeout: Duration,
    /// How failed e-mails are tried again.
    pub retry: Retry,
}

/// Why e-mail cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// A server without a sender.
    #[error(
        "HERALD_SMTP_URL is set but HERALD_SMTP_FROM is not: e-mails need a sender, \
         such as `Herald <noreply@herald.example>`"
    )]
    MissingSender,
    /// A server address lettre cannot use.
    #[error("HERALD_SMTP_URL is not a usable SMTP URL: {0}")]
    Url(#[source] lettre::transport::smtp::Error),
}

impl EmailConfig {
    /// The settings of `args`, none when no SMTP server is configured;
    /// e-mails link to `public_url` unless another app URL is given.
    pub fn from_args(args: &EmailArgs, public_url: &str) -> Result<Option<Self>, EmailError> {
        let Some(smtp_url) = args.smtp_url.clone() else {
            return Ok(None);
        };
        let from = args.smtp_from.clone().ok_or(EmailError::MissingSender)?;
        Smtp::check_url(&smtp_url)?;
        Ok(Some(Self {
            smtp_url,
            from,
            app_url: args
                .app_url
                .as_ref()
                .map_or_else(|| public_url.to_owned(), ToString::to_string),
            timeout: args.smtp_timeout.into(),
            retry: Retry {
                attempts: args.smtp_attempts,
                first_pause: args.smtp_backoff.into(),
                max_pause: args.smtp_backoff_max.into(),
            },
        }))
    }
}

/// The e-mail channel: the SMTP server, how failures are retried, and the
/// roles told of new bookings, whose members are e-mailed them when their
/// settings say so.
pub struct Email {
    smtp: Smtp,
    retry: Retry,
    audience: Vec<Role>,
}

impl Email {
    /// E-mail through the configured server, to people in `audience` for new
    /// bookings.
    pub fn new(config: &EmailConfig, audience: Vec<Role>) -> Result<Self, EmailError> {
        Ok(Self {
            smtp: Smtp::new(config)?,
            retry: config.retry,
            audience,
        })
    }
}

impl Channel for Email {
    const NAME: &'static str = "email";

    fn retry(&self) -> &Retry {
        &self.retry
    }

    async fn targets(
        &self,
        conn: &mut PgConnection,
        fresh: &[Fresh],
    ) -> Result<Vec<Target>, sqlx::Error> {
        recipients::emails(conn, fresh, &self.audience).await
    }

    async fn deliver(
        &self,
        conn: &mut PgConnection,
        due: &Due,
    ) -> Result<Result<(), Failure>, sqlx::Error> {
        smtp::send(conn, &self.smtp, due).await
    }
}
