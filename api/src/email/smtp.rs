//! Sending an e-mail over SMTP. Each e-mail is one SMTP conversation on a
//! connection of its own, which ends with the attempt: a worker that dies
//! mid-send leaves nothing behind that could finish the message later.
//!
//! An e-mail says which kind of thing happened, in one line, and links to
//! the app; its `Message-ID` is made of the notification's and the
//! recipient's ids, so a receiver can tell the rare repeat (a crash after
//! the server's acceptance, before the commit) for what it is.

use commands::accounts::Account;
use domain::values::NotificationKind;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{EmailConfig, EmailError};
use crate::deliveries::{Due, Failure};

/// The SMTP server and what every e-mail carries.
pub(super) struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// Where the recipient reads their notifications.
    link: String,
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
            .message_id(Some(message_id(due.notification_id, due.target)))
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
            Failure::Impossible(format!(
                "no e-mail is written for a {} notification",
                due.kind
            ))
        })?;
        let account = account.ok_or_else(|| {
            Failure::Impossible("the recipient has no active account to send to".to_owned())
        })?;
        let to: Address = account.email.parse().map_err(|err| {
            Failure::Impossible(format!(
                "the recipient's address cannot be written to: {err}"
            ))
        })?;
        self.message(due, kind, to)
            .map_err(|err| Failure::Impossible(err.to_string()))
    }
}

/// The `Message-ID` of the e-mail of a notification to a recipient: the
/// same for every attempt.
fn message_id(notification_id: Uuid, user_id: Uuid) -> String {
    format!("<{notification_id}.{user_id}@herald>")
}

/// Writes the e-mail of `due` and hands it to the server; the outer error is
/// Postgres failing.
pub(super) async fn send(
    conn: &mut PgConnection,
    smtp: &Smtp,
    due: &Due,
) -> Result<Result<(), Failure>, sqlx::Error> {
    // Read when it is sent: someone deactivated since it was queued is not
    // written to.
    let account = commands::accounts::of_active_user(&mut *conn, due.target).await?;
    let message = match smtp.write(due, account) {
        Ok(message) => message,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(smtp
        .transport
        .send(message)
        .await
        .map(|_| ())
        .map_err(|err| {
            // A permanent refusal (5xx: no such mailbox) is final.
            if err.is_permanent() {
                Failure::Impossible(err.to_string())
            } else {
                Failure::Refused(err.to_string())
            }
        }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::deliveries::Retry;

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
            target: Uuid::new_v4(),
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
        let id = format!("<{}.{}@herald>", due.notification_id, due.target);
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
        assert!(matches!(lost, Err(Failure::Impossible(_))));
        let mut strange = due(NotificationKind::PaymentFailed);
        strange.kind = "carrier_pigeon".to_owned();
        let unknown = smtp.write(&strange, account("anna@herald.test"));
        assert!(matches!(unknown, Err(Failure::Impossible(_))));
    }
}
