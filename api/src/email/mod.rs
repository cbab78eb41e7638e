//! Notifications sent by e-mail, from the notifications read model alone, so
//! that delivery never slows or fails a command.
//!
//! One worker per process does two things side by side. It fills the outbox
//! (`notification_emails`, [`outbox`]) with every notification its
//! recipient wants by e-mail, woken by the notifications projection on
//! [`WAKE_CHANNEL`] and polling besides; and it sends what is due
//! ([`delivery`]), each e-mail in a transaction that holds its row locked
//! while the SMTP server is talked to, so that an e-mail is marked sent only
//! once the server has accepted it, and no two workers send the same one.
//! A failed e-mail is tried again after growing pauses, and set aside after
//! [`Retry::attempts`] with its last error. What an e-mail says is one line
//! ([`NotificationKind::summary`]) and a link to the app, never what the
//! notification is about in detail.
//!
//! [`NotificationKind::summary`]: domain::values::NotificationKind::summary

mod delivery;
mod outbox;

use std::time::Duration;

use clap::Args;
use domain::values::Role;
use futures::future::{FutureExt, Shared};
use lettre::message::Mailbox;
use projections::notifications::WAKE_CHANNEL;
use secrecy::SecretString;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::background::StopSignal;
use delivery::{Outcome, Smtp};

/// The longest the worker waits before it looks for new notifications and
/// due e-mails again, should a wake-up be missed.
const POLL: Duration = Duration::from_secs(1);
/// The pause after Postgres failed the worker.
const DATABASE_PAUSE: Duration = Duration::from_secs(1);

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

/// How a failed e-mail is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts before the e-mail is set aside.
    pub attempts: u32,
    /// The pause after the first failure, doubled after each further one.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Retry {
    /// The pause after the `failures`th failed attempt.
    pub fn pause(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first_pause
            .saturating_mul(1 << doublings)
            .min(self.max_pause)
    }
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
    /// Postgres failed the worker's first step.
    #[error("cannot prepare the e-mail outbox: {0}")]
    Database(#[from] sqlx::Error),
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

/// The e-mail worker.
pub struct Mailer {
    pool: PgPool,
    smtp: Smtp,
    retry: Retry,
    /// The roles told of new bookings, whose members are e-mailed them when
    /// their settings say so.
    audience: Vec<Role>,
    /// Told when e-mails were queued, so they are sent at once.
    queued: Notify,
}

impl Mailer {
    /// A worker sending through the configured server to people in
    /// `audience` for new bookings; on the first start ever, it marks the
    /// notifications there are as already seen, so history is not mailed.
    pub async fn start(
        pool: PgPool,
        config: EmailConfig,
        audience: Vec<Role>,
    ) -> Result<Self, EmailError> {
        let smtp = Smtp::new(&config)?;
        outbox::start(&pool).await?;
        Ok(Self {
            pool,
            smtp,
            retry: config.retry,
            audience,
            queued: Notify::new(),
        })
    }

    /// Queues and sends e-mails until stopped; an e-mail being sent when the
    /// stop comes is finished first.
    pub async fn run(self, stop: StopSignal) {
        let stop = stop.shared();
        tokio::join!(self.keep_queueing(stop.clone()), self.keep_sending(stop));
    }

    /// Fills the outbox until stopped, coming back after every failure.
    async fn keep_queueing(&self, stop: Shared<StopSignal>) {
        let queueing = async {
            loop {
                if let Err(err) = self.follow_notifications().await {
                    tracing::warn!(%err, "cannot queue e-mails of notifications; trying again");
                    tokio::time::sleep(DATABASE_PAUSE).await;
                }
            }
        };
        tokio::select! {
            () = queueing => {}
            () = stop => {}
        }
    }

    /// Queues what is new each time the projection announces notifications,
    /// and every [`POLL`] besides.
    async fn follow_notifications(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        loop {
            self.queue_all().await?;
            tokio::select! {
                notified = listener.recv() => { notified?; }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Queues batches until no notification is left after the cursor.
    async fn queue_all(&self) -> Result<(), sqlx::Error> {
        loop {
            let queued = outbox::queue(&self.pool, &self.audience).await?;
            if queued.emails > 0 {
                self.queued.notify_one();
            }
            if queued.notifications == 0 {
                return Ok(());
            }
        }
    }

    /// Sends due e-mails one after another until stopped.
    async fn keep_sending(&self, stop: Shared<StopSignal>) {
        loop {
            let wait = match delivery::deliver_one(&self.pool, &self.smtp, &self.retry).await {
                Ok(Some(outcome)) => {
                    count(outcome);
                    Duration::ZERO
                }
                Ok(None) => self.until_next_due().await,
                Err(err) => {
                    tracing::warn!(%err, "cannot send e-mails of notifications; trying again");
                    DATABASE_PAUSE
                }
            };
            tokio::select! {
                biased;
                () = stop.clone() => return,
                () = self.queued.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the next e-mail falls due, at most [`POLL`].
    async fn until_next_due(&self) -> Duration {
        match delivery::next_due_in(&self.pool).await {
            Ok(Some(wait)) => wait.min(POLL),
            Ok(None) => POLL,
            Err(err) => {
                tracing::warn!(%err, "cannot read when e-mails fall due");
                DATABASE_PAUSE
            }
        }
    }
}

/// Counts an attempt's outcome in `herald_notification_emails_total`.
fn count(outcome: Outcome) {
    metrics::counter!("herald_notification_emails_total", "outcome" => outcome.as_str())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_first_up_to_the_longest() {
        let retry = Retry {
            attempts: 8,
            first_pause: Duration::from_secs(30),
            max_pause: Duration::from_secs(300),
        };
        let pauses: Vec<u64> = (1..=6).map(|n| retry.pause(n).as_secs()).collect();
        assert_eq!(pauses, [30, 60, 120, 240, 300, 300]);
        assert_eq!(retry.pause(u32::MAX), Duration::from_secs(300));
    }
}
