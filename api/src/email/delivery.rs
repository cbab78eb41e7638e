//! Sending one due e-mail in the transaction that holds its outbox row
//! locked: the row is marked sent only after the SMTP server accepted the
//! message, so a worker that dies before leaves it to be sent again, and the
//! lock keeps every other worker off it meanwhile. Each e-mail is one SMTP
//! conversation on a connection of its own, which ends with the attempt.
//!
//! An e-mail says which kind of thing happened, in one line, and links to
//! the app; its `Message-ID` is made of the notification's and the
//! recipient's ids, so a receiver can tell the rare repeat (a crash after
//! the server's acceptance, before the commit) for what it is.

use std::time::Duration;

use commands::accounts::Account;
use domain::values::NotificationKind;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{EmailConfig, EmailError, Retry};

/// The SMTP server and what every e-mail carries.
pub(super) struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// Where the recipient reads their notifications.
    link: String,
}

/// An e-mail that is due, as taken from the outbox.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    notification_id: Uuid,
    user_id: Uuid,
    kind: String,
    attempts: i32,
}

/// How an attempt at an e-mail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The server accepted it.
    Sent,
    /// It failed, and falls due again later.
    Retried,
    /// It failed for the last time, and is set aside with its error.
    SetAside,
}

impl Outcome {
    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Retried => "retried",
            Self::SetAside => "set_aside",
        }
    }
}

/// Why an e-mail was not sent.
enum Failure {
    /// It cannot be written (no account to send to, an address or a kind
    /// Herald cannot write), which trying again does not change.
    Unwritable(String),
    /// The server could not be reached, or refused it.
    Smtp(lettre::transport::smtp::Error),
}

impl Smtp {
    /// Refuses a URL that names no server lettre can talk to.
    pub fn check_url(url: &SecretString) -> Result<(), EmailError> {
        Self::builder(url).map(drop)
    }

    /// A transport to the server `url` names, to be tuned.
    fn builder(url: &SecretString) -> Result<AsyncSmtpTransportBuilder, EmailError> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret()).map_err(EmailError::Url)
    }

    /// The configured server, with each step of a conversation given at most
    /// the configured timeout.
    pub fn new(config: &EmailConfig) -> Result<Self, EmailError> {
        let transport = Self::builder(&config.smtp_url)?
            .timeout(Some(config.timeout))
            .build();
        Ok(Self {
            transport,
            from: config.from.clone(),
            link: format!("{}/notifications", config.app_url.trim_end_matches('/')),
        })
    }

    /// The e-mail of `due`, of `kind`, to `to`.
    fn message(
        &self,
        due: &Due,
        kind: NotificationKind,
        to: Address,
    ) -> Result<Message, lettre::error::Error> {
        Message::builder()
            .message_id(Some(message_id(due.notification_id, due.user_id)))
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(format!("Herald: {}", kind.summary()))
            .header(ContentType::TEXT_PLAIN)
            // RFC 3834: no auto-replies to a machine's mail.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .body(self.text(kind))
    }

    /// What the e-mail says: what happened, in one line, and where to see it.
    fn text(&self, kind: NotificationKind) -> String {
        format!(
            "{}.\n\nSee it in Herald: {}\n\n\
             You get this e-mail because your notification settings send this\n\
             kind of notification by e-mail; you can change them in Herald.\n",
            kind.summary(),
            self.link,
        )
    }

    /// Writes the e-mail of `due` to the owner of `account`.
    fn write(&self, due: &Due, account: Option<Account>) -> Result<Message, Failure> {
        let kind: NotificationKind = due.kind.parse().map_err(|_| {
            Failure::Unwritable(format!(
                "no e-mail is written for a {} notification",
                due.kind
            ))
        })?;
        let account = account.ok_or_else(|| {
            Failure::Unwritable("the recipient has no account to send to".to_owned())
        })?;
        let to: Address = account.email.parse().map_err(|err| {
            Failure::Unwritable(format!(
                "the recipient's address cannot be written to: {err}"
            ))
        })?;
        self.message(due, kind, to)
            .map_err(|err| Failure::Unwritable(err.to_string()))
    }
}

/// The `Message-ID` of the e-mail of a notification to a recipient: the
/// same for every attempt.
fn message_id(notification_id: Uuid, user_id: Uuid) -> String {
    format!("<{notification_id}.{user_id}@herald>")
}

/// Sends the e-mail that has been due longest and records how that went,
/// in one transaction; none when nothing is due that no other worker is
/// sending.
pub(super) async fn deliver_one(
    pool: &PgPool,
    smtp: &Smtp,
    retry: &Retry,
) -> Result<Option<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT declare_no_event_writes()")
        .execute(&mut *tx)
        .await?;
    let Some(due): Option<Due> = sqlx::query_as(include_str!("take.sql"))
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let outcome = match attempt(&mut tx, smtp, &due).await? {
        Ok(()) => mark_sent(&mut tx, &due).await?,
        Err(failure) => record_failure(&mut tx, &due, failure, retry).await?,
    };
    if let Err(err) = tx.commit().await {
        if outcome == Outcome::Sent {
            tracing::error!(
                notification_id = %due.notification_id,
                user_id = %due.user_id,
                "an e-mail the server accepted could not be marked sent; it will be sent again"
            );
        }
        return Err(err);
    }
    Ok(Some(outcome))
}

/// Writes the e-mail of `due` and hands it to the server; the outer error is
/// Postgres failing.
async fn attempt(
    conn: &mut PgConnection,
    smtp: &Smtp,
    due: &Due,
) -> Result<Result<(), Failure>, sqlx::Error> {
    let account = commands::accounts::of_user(&mut *conn, due.user_id).await?;
    let message = match smtp.write(due, account) {
        Ok(message) => message,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(smtp
        .transport
        .send(message)
        .await
        .map(|_| ())
        .map_err(Failure::Smtp))
}

/// Marks the e-mail of `due` sent.
async fn mark_sent(conn: &mut PgConnection, due: &Due) -> Result<Outcome, sqlx::Error> {
    sqlx::query(
        "UPDATE notification_emails SET attempts = attempts + 1, sent_at = clock_timestamp()
          WHERE notification_id = $1 AND user_id = $2",
    )
    .bind(due.notification_id)
    .bind(due.user_id)
    .execute(conn)
    .await?;
    Ok(Outcome::Sent)
}

/// Records a failed attempt at the e-mail of `due`: it falls due again after
/// the retry's pause, or is set aside when it cannot be written or this was
/// its last attempt.
async fn record_failure(
    conn: &mut PgConnection,
    due: &Due,
    failure: Failure,
    retry: &Retry,
) -> Result<Outcome, sqlx::Error> {
    let failures = u32::try_from(due.attempts).unwrap_or(0).saturating_add(1);
    let (error, set_aside) = match failure {
        Failure::Unwritable(reason) => (reason, true),
        Failure::Smtp(err) => (err.to_string(), failures >= retry.attempts),
    };
    let pause = retry.pause(failures);
    sqlx::query(include_str!("failed.sql"))
        .bind(due.notification_id)
        .bind(due.user_id)
        .bind(&error)
        .bind(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX))
        .bind(set_aside)
        .execute(conn)
        .await?;
    let outcome = if set_aside {
        Outcome::SetAside
    } else {
        Outcome::Retried
    };
    // The error may quote the server, and so the address: it is kept in the
    // outbox only.
    tracing::warn!(
        notification_id = %due.notification_id,
        user_id = %due.user_id,
        attempts = failures,
        outcome = outcome.as_str(),
        "an e-mail of a notification failed; its error is in notification_emails.last_error"
    );
    Ok(outcome)
}

/// How long until the next e-mail not yet due falls due; none when there is
/// none.
pub(super) async fn next_due_in(pool: &PgPool) -> Result<Option<Duration>, sqlx::Error> {
    let millis: Option<i64> = sqlx::query_scalar(
        "SELECT ceil(extract(epoch FROM min(due_at) - now()) * 1000)::bigint
           FROM notification_emails
          WHERE sent_at IS NULL AND failed_at IS NULL AND due_at > now()",
    )
    .fetch_one(pool)
    .await?;
    Ok(millis.map(|millis| Duration::from_millis(u64::try_from(millis).unwrap_or(0))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn smtp(app_url: &str) -> Smtp {
        let config = EmailConfig {
            smtp_url: "smtp://127.0.0.1:2525".to_owned().into(),
            from: "Herald <herald@herald.test>".parse().unwrap(),
            app_url: app_url.to_owned(),
            timeout: Duration::from_secs(1),
            retry: Retry {
                attempts: 1,
                first_pause: Duration::from_secs(1),
                max_pause: Duration::from_secs(1),
            },
        };
        Smtp::new(&config).unwrap()
    }

    fn due(kind: NotificationKind) -> Due {
        Due {
            notification_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            kind: kind.as_str().to_owned(),
            attempts: 0,
        }
    }

    fn account(email: &str) -> Option<Account> {
        Some(Account {
            user_id: Uuid::new_v4(),
            email: email.to_owned(),
            name: "Anna".to_owned(),
            phone: None,
            specialty: None,
            bio: None,
            password_hash: String::new(),
        })
    }

    #[test]
    fn an_email_names_what_happened_links_to_the_app_and_is_identified_by_its_notification() {
        let smtp = smtp("https://app.herald.test/care/");
        let due = due(NotificationKind::BookingAssigned);
        let Ok(message) = smtp.write(&due, account("anna@herald.test")) else {
            panic!("the e-mail is not written");
        };
        let text = String::from_utf8(message.formatted()).unwrap();
        let id = format!("<{}.{}@herald>", due.notification_id, due.user_id);
        for expected in [
            format!("Message-ID: {id}"),
            "To: anna@herald.test".to_owned(),
            "Subject: Herald: A doctor was assigned to your visit".to_owned(),
            "Content-Transfer-Encoding: 7bit".to_owned(),
            "See it in Herald: https://app.herald.test/care/notifications".to_owned(),
        ] {
            assert!(text.contains(&expected), "{expected} is not in\n{text}");
        }
    }

    #[test]
    fn an_email_without_an_account_or_of_an_unknown_kind_cannot_be_written() {
        let smtp = smtp("https://app.herald.test");
        let lost = smtp.write(&due(NotificationKind::PaymentFailed), None);
        assert!(matches!(lost, Err(Failure::Unwritable(_))));
        let mut strange = due(NotificationKind::PaymentFailed);
        strange.kind = "carrier_pigeon".to_owned();
        let unknown = smtp.write(&strange, account("anna@herald.test"));
        assert!(matches!(unknown, Err(Failure::Unwritable(_))));
    }
}
