//! Notifications by e-mail, through a real SMTP server (the sink of
//! `fixtures/smtp_sink.py`): each e-mail sent once, even across a crash,
//! saying no more than what happened, as people's settings say, and tried
//! again until a server takes it or it is set aside.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use api::deliveries::Retry;
use api::email::EmailConfig;
use domain::values::{Actor, NotificationKind};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::common::{self, doctor, patient, TestApp};
use crate::notifications::{spawn_reminding, step};
use crate::payment_flow::{eventually, wait_for};

/// Where e-mails link to.
const APP_URL: &str = "https://app.herald.test";

/// The SMTP sink on a port of its own, writing what it accepts into a
/// directory of its own; killed, and its directory removed, when dropped.
struct Sink {
    child: Child,
    port: u16,
    directory: PathBuf,
    /// While this file exists, the sink holds clients before it accepts
    /// their message.
    hold: PathBuf,
}

impl Sink {
    /// A sink on `port` that accepts everything but mail to `refused`.
    fn start(port: u16, refused: &[&str]) -> Self {
        Self::spawn(port, refused, false)
    }

    /// A sink on `port` that holds every client once it has sent its whole
    /// message, until [`Sink::release`].
    fn holding(port: u16) -> Self {
        Self::spawn(port, &[], true)
    }

    fn spawn(port: u16, refused: &[&str], hold: bool) -> Self {
        let base = std::env::temp_dir().join(format!("herald-smtp-{}", Uuid::new_v4()));
        let directory = base.join("mail");
        std::fs::create_dir_all(&directory).unwrap();
        let hold_file = base.join("hold");
        if hold {
            std::fs::write(&hold_file, "").unwrap();
        }
        let mut command = Command::new("python3");
        command
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/api/fixtures/smtp_sink.py"
            ))
            .arg(port.to_string())
            .arg(&directory)
            .arg("--hold")
            .arg(&hold_file)
            .stdout(Stdio::piped());
        for address in refused {
            command.arg("--refuse").arg(address);
        }
        let mut child = command.spawn().unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "listening", "the SMTP sink did not start");
        Self {
            child,
            port,
            directory,
            hold: hold_file,
        }
    }

    /// Lets the held clients, and every one after, have their messages
    /// accepted.
    fn release(&self) {
        std::fs::remove_file(&self.hold).unwrap();
    }

    /// Waits until the sink has held `clients` clients in all.
    async fn wait_until_holding(&self, clients: usize) {
        eventually(&format!("the sink holds {clients} clients"), || async {
            let held = std::fs::read_to_string(&self.hold).unwrap_or_default();
            held.lines().count() >= clients
        })
        .await;
    }

    /// The messages accepted so far.
    fn mails(&self) -> Vec<Mail> {
        let mut names: Vec<_> = std::fs::read_dir(&self.directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| Mail::parse(&std::fs::read_to_string(self.directory.join(name)).unwrap()))
            .collect()
    }

    /// Waits until `count` messages are accepted and returns them.
    async fn wait_for_mails(&self, count: usize) -> Vec<Mail> {
        eventually(&format!("{count} e-mails arrive"), || async {
            self.mails().len() >= count
        })
        .await;
        self.mails()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(base) = self.directory.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// A message as the sink accepted it.
#[derive(Debug, Clone)]
struct Mail {
    /// The envelope's recipients.
    recipients: Vec<String>,
    /// The message, headers and body, as it came.
    text: String,
}

impl Mail {
    fn parse(file: &str) -> Self {
        let mut recipients = Vec::new();
        let mut text = file;
        while let Some(rest) = text.strip_prefix("X-Sink-Rcpt-To: ") {
            let (recipient, after) = rest.split_once("\r\n").unwrap();
            recipients.push(recipient.to_owned());
            text = after;
        }
        Self {
            recipients,
            text: text.to_owned(),
        }
    }

    /// The value of the header `name`.
    fn header(&self, name: &str) -> &str {
        let (head, _) = self.text.split_once("\r\n\r\n").unwrap();
        head.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in\n{}", self.text))
    }

    /// The one recipient, checked to be the one of the header too.
    fn to(&self) -> &str {
        assert_eq!(self.recipients.len(), 1, "{:?}", self.recipients);
        assert_eq!(self.header("To"), self.recipients[0]);
        &self.recipients[0]
    }
}

/// E-mail through the sink on `port`, tried again quickly.
fn email(port: u16, attempts: u32) -> EmailConfig {
    EmailConfig {
        smtp_url: format!("smtp://127.0.0.1:{port}").into(),
        from: "Herald <herald@herald.test>".parse().unwrap(),
        app_url: APP_URL.to_owned(),
        timeout: Duration::from_secs(20),
        retry: Retry {
            attempts,
            first_pause: Duration::from_millis(100),
            max_pause: Duration::from_millis(400),
        },
    }
}

/// The address Herald knows `actor` by.
fn address(actor: Actor) -> String {
    format!("{}@herald.test", actor.user_id)
}

/// A row of the outbox: for an e-mail, `target` is its recipient; for a
/// webhook, the webhook.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Queued {
    pub notification_id: Uuid,
    pub target: Uuid,
    pub kind: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent: bool,
    pub set_aside: bool,
}

/// A channel's outbox, in log order.
async fn outbox(app: &TestApp, channel: &str) -> Vec<Queued> {
    sqlx::query_as(
        "SELECT notification_id, target, kind, attempts, last_error,
                sent_at IS NOT NULL AS sent, failed_at IS NOT NULL AS set_aside
           FROM notification_deliveries WHERE channel = $1 ORDER BY position, target",
    )
    .bind(channel)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Waits until every notification is looked at and every delivery of
/// `channel` made or set aside, and returns the channel's outbox.
pub(crate) async fn settled(app: &TestApp, channel: &str) -> Vec<Queued> {
    app.wait_for_projections().await;
    eventually("every delivery is queued and made or set aside", || async {
        let (cursor, newest, pending): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT position FROM notification_delivery_cursors WHERE channel = $1),
                    (SELECT COALESCE(max(position), 0) FROM rm_notifications),
                    (SELECT count(*) FROM notification_deliveries
                      WHERE channel = $1 AND sent_at IS NULL AND failed_at IS NULL)",
        )
        .bind(channel)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        cursor == newest && pending == 0
    })
    .await;
    outbox(app, channel).await
}

/// `actor` books a visit at `address`; its id.
async fn book_at(app: &TestApp, actor: Actor, address: &str) -> Uuid {
    let reply = app
        .post(
            "/api/v1/bookings",
            actor,
            json!({ "call_type": "urgent", "address": address, "amount_minor": 150000 }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.id()
}

/// `doctor` takes `booking`.
async fn assign(app: &TestApp, doctor: Actor, booking: Uuid) {
    let body = json!({ "doctor_id": doctor.user_id });
    step(app, doctor, booking, "assign", body).await;
}

#[tokio::test]
async fn each_notification_is_emailed_once_to_its_recipient_even_when_a_worker_dies_mid_send() {
    let mut app = TestApp::spawn_with_pipeline().await;
    let sink = Sink::holding(common::free_port());
    app.start_mailer(email(sink.port, 5)).await;
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;

    // The server has the whole message but has not accepted it when the
    // worker dies.
    let visit = app.booking(alice).await;
    assign(&app, doctor, visit).await;
    sink.wait_until_holding(1).await;
    app.kill_mailer();
    // Two workers now: one sends it again, and the other never.
    app.start_mailer(email(sink.port, 5)).await;
    app.start_mailer(email(sink.port, 5)).await;
    sink.wait_until_holding(2).await;
    sink.release();
    step(&app, doctor, visit, "complete", json!({})).await;

    let queued = settled(&app, "email").await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(queued.len(), 2, "{queued:?}");
    let kinds: Vec<&str> = queued.iter().map(|row| row.kind.as_str()).collect();
    assert_eq!(kinds, ["booking_assigned", "booking_completed"]);
    for row in &queued {
        assert_eq!(row.target, alice.user_id);
        assert!(row.sent && !row.set_aside, "{row:?}");
        // The attempt cut short by the crash is not counted.
        assert_eq!((row.attempts, row.last_error.as_deref()), (1, None));
        let id = format!("<{}.{}@herald>", row.notification_id, row.target);
        let sent: Vec<&Mail> = mails
            .iter()
            .filter(|mail| mail.header("Message-ID") == id)
            .collect();
        assert_eq!(sent.len(), 1, "{id}: {mails:#?}");
        assert_eq!(sent[0].to(), address(alice));
    }
    app.stop_mailer().await;
}

#[tokio::test]
async fn an_email_says_what_happened_but_never_a_message_a_reason_or_an_address() {
    let mut app = spawn_reminding(Duration::from_millis(300)).await;
    let sink = Sink::start(common::free_port(), &[]);
    app.start_mailer(email(sink.port, 5)).await;
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;
    let secrets = [
        "Ulitsa Sekretnaya 42, flat 7",
        "suspected measles after the school trip",
        "the rash on my arm has spread to my chest",
    ];
    // A word of each that no e-mail would have otherwise.
    let telltales = ["Sekretnaya", "measles", "rash"];

    let visit = book_at(&app, alice, secrets[0]).await;
    assign(&app, doctor, visit).await;
    step(
        &app,
        alice,
        visit,
        "cancel",
        json!({ "reason": secrets[1] }),
    )
    .await;
    let chat = app.group_chat(alice, &[doctor]).await;
    app.message(chat, alice, secrets[2]).await;
    wait_for(&app, "UnreadReminded", 1).await;

    settled(&app, "email").await;
    let mails = sink.mails();
    let mut told: Vec<(String, String)> = mails
        .iter()
        .map(|mail| (mail.to().to_owned(), mail.header("Subject").to_owned()))
        .collect();
    told.sort();
    let mut expected = vec![
        (address(alice), NotificationKind::BookingAssigned),
        (address(doctor), NotificationKind::BookingCancelled),
        (address(doctor), NotificationKind::ChatMessages),
    ]
    .into_iter()
    .map(|(to, kind)| (to, format!("Herald: {}", kind.summary())))
    .collect::<Vec<_>>();
    expected.sort();
    assert_eq!(told, expected);
    for mail in &mails {
        // Plain text as written, so nothing could hide in an encoding.
        assert_eq!(mail.header("Content-Transfer-Encoding"), "7bit");
        assert!(!mail.text.contains("=?"), "{}", mail.text);
        assert!(
            mail.text.contains(&format!("{APP_URL}/notifications")),
            "{}",
            mail.text
        );
        for leak in secrets.iter().chain(&telltales) {
            assert!(!mail.text.contains(leak), "{leak} in\n{}", mail.text);
        }
    }
}

#[tokio::test]
async fn a_person_who_switches_email_of_a_kind_off_gets_none_of_it_but_still_the_rest() {
    let mut app = TestApp::spawn_with_pipeline().await;
    let sink = Sink::start(common::free_port(), &[]);
    app.start_mailer(email(sink.port, 5)).await;
    let alice = app.enroll(patient()).await;
    let (keen, quiet) = (app.enroll(doctor()).await, app.enroll(doctor()).await);
    for (actor, switches) in [
        (alice, json!({ "booking_assigned": false })),
        (keen, json!({ "booking_requested": true })),
    ] {
        let changed = app
            .call(
                actor,
                &common::patch("/api/v1/me/notifications", json!({ "email": switches })),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    }

    let visit = app.booking(alice).await;
    assign(&app, quiet, visit).await;
    step(&app, quiet, visit, "complete", json!({})).await;

    let queued = settled(&app, "email").await;
    let mut told: Vec<(String, String)> = sink
        .mails()
        .iter()
        .map(|mail| (mail.to().to_owned(), mail.header("Subject").to_owned()))
        .collect();
    told.sort();
    let mut expected = vec![
        (
            address(keen),
            format!("Herald: {}", NotificationKind::BookingRequested.summary()),
        ),
        (
            address(alice),
            format!("Herald: {}", NotificationKind::BookingCompleted.summary()),
        ),
    ];
    expected.sort();
    assert_eq!(told, expected);
    assert!(
        queued.iter().all(|row| row.kind != "booking_assigned"),
        "{queued:?}"
    );
}

/// A Herald e-mailing to `port`, where nothing listens yet, and a patient
/// whose visit a doctor took, her e-mail of it failed `attempts` times.
async fn emailing_nobody(port: u16, attempts: i32) -> (TestApp, Actor) {
    let mut app = TestApp::spawn_with_pipeline().await;
    app.start_mailer(email(port, 20)).await;
    let alice = app.enroll(patient()).await;
    let doctor = app.enroll(doctor()).await;
    let visit = app.booking(alice).await;
    assign(&app, doctor, visit).await;
    eventually("the e-mail has failed", || async {
        outbox(&app, "email")
            .await
            .first()
            .is_some_and(|row| row.attempts >= attempts)
    })
    .await;
    (app, alice)
}

#[tokio::test]
async fn an_email_the_server_refuses_at_first_is_tried_again_until_it_is_taken() {
    let port = common::free_port();
    // Nothing listens yet: every attempt fails, and is counted.
    let (app, alice) = emailing_nobody(port, 2).await;
    let failing = outbox(&app, "email").await;
    assert!(!failing[0].sent && !failing[0].set_aside, "{failing:?}");
    assert!(failing[0].last_error.is_some(), "{failing:?}");

    let sink = Sink::start(port, &[]);
    let mails = sink.wait_for_mails(1).await;
    assert_eq!(mails[0].to(), address(alice));
    let queued = settled(&app, "email").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(queued[0].sent, "{queued:?}");
    assert!(queued[0].attempts > failing[0].attempts, "{queued:?}");
    assert_eq!(sink.mails().len(), 1);
}

#[tokio::test]
async fn an_email_refused_for_good_is_set_aside_at_once_with_its_error_and_the_others_still_go() {
    let mut app = TestApp::spawn_with_pipeline().await;
    let (alice, bob) = (patient(), patient());
    let sink = Sink::start(common::free_port(), &[&address(alice)]);
    app.start_mailer(email(sink.port, 3)).await;
    let alice = app.enroll(alice).await;
    let bob = app.enroll(bob).await;
    let doctor = app.enroll(doctor()).await;
    for patient in [alice, bob] {
        let visit = app.booking(patient).await;
        assign(&app, doctor, visit).await;
    }

    let queued = settled(&app, "email").await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0].to(), address(bob));
    let refused = queued
        .iter()
        .find(|row| row.target == alice.user_id)
        .unwrap();
    // A 550 (no such mailbox) is final: nothing is gained by asking again.
    assert!(refused.set_aside && !refused.sent, "{refused:?}");
    assert_eq!(refused.attempts, 1, "{refused:?}");
    let error = refused.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("550"), "{error}");
}

#[tokio::test]
async fn someone_without_an_account_is_never_emailed_and_their_notifications_take_no_place_in_the_outbox(
) {
    let mut app = TestApp::spawn_with_pipeline().await;
    let sink = Sink::start(common::free_port(), &[]);
    app.start_mailer(email(sink.port, 5)).await;
    let alice = app.enroll(patient()).await;
    // A service account's token: a user with no account, so no address.
    let service = patient();
    let doctor = app.enroll(doctor()).await;

    for patient in [service, alice] {
        let visit = app.booking(patient).await;
        assign(&app, doctor, visit).await;
    }

    let queued = settled(&app, "email").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].target, alice.user_id);
    let told: Vec<String> = sink
        .mails()
        .iter()
        .map(|mail| mail.to().to_owned())
        .collect();
    assert_eq!(told, [address(alice)]);
    app.stop_mailer().await;
}

#[tokio::test]
async fn someone_deactivated_before_their_email_goes_out_is_not_written_to() {
    let port = common::free_port();
    // Nothing listens yet, so the e-mail waits to be tried again.
    let (app, alice) = emailing_nobody(port, 1).await;

    let path = format!("/api/v1/users/{}/deactivate", alice.user_id);
    let deactivated = app.post(&path, common::admin(), json!({})).await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
    let sink = Sink::start(port, &[]);

    let queued = settled(&app, "email").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(queued[0].set_aside && !queued[0].sent, "{queued:?}");
    assert_eq!(
        queued[0].last_error.as_deref(),
        Some("the recipient has no active account to send to")
    );
    assert!(sink.mails().is_empty(), "{:#?}", sink.mails());
}
