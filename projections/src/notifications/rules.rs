//! What is worth a notification, and to whom: the one home of the rules,
//! which both the live worker (over what it loads for a batch) and a rebuild
//! (over the whole log) run.
//!
//! - A new booking: to everyone in the audience of new bookings.
//! - A doctor assigned, a visit completed: to the booking's patient.
//! - A booking cancelled: to its patient and its doctor.
//! - A payment succeeded, failed or refunded: to its patient.
//! - Messages left unread (the chat's `UnreadReminded`): to each member
//!   reminded, gathered into one notification per chat and reminder.
//!
//! Nobody hears of what they did themself, a deactivated person hears of
//! nothing, and what a person switched off in the app or muted is not shown
//! to them; whether the rest is e-mailed is their setting at the time.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::booking::BookingEvent;
use domain::chat::ChatEvent;
use domain::payment::PaymentEvent;
use domain::user::{NotificationSettings, UserEvent};
use domain::values::{NotificationKind, Role};
use uuid::Uuid;

/// An event the rules look at, decoded.
#[derive(Debug)]
pub(crate) enum Event {
    Booking(BookingEvent),
    Payment(PaymentEvent),
    Chat(ChatEvent),
    User(UserEvent),
}

/// Where an event is in the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub aggregate_id: Uuid,
}

/// A row of `rm_notifications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    pub id: Uuid,
    pub position: i64,
    /// None for everyone in the audience of its kind.
    pub user_id: Option<Uuid>,
    pub kind: NotificationKind,
    pub booking_id: Option<Uuid>,
    pub payment_id: Option<Uuid>,
    pub chat_id: Option<Uuid>,
    pub messages: Option<i64>,
    pub email: bool,
    pub broadcast: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Herald's namespace for notification ids, which are derived from what
/// they are about so that a rebuild gives the same ones.
const NAMESPACE: Uuid = Uuid::from_u128(0x6e6f_7469_6669_4865_7261_6c64_0000_0001);

/// The id of the notification at `position` for `user_id` (none for an
/// audience).
pub(crate) fn notification_id(position: i64, user_id: Option<Uuid>) -> Uuid {
    let mut name = [0u8; 24];
    name[..8].copy_from_slice(&position.to_be_bytes());
    name[8..].copy_from_slice(user_id.unwrap_or_default().as_bytes());
    Uuid::new_v5(&NAMESPACE, &name)
}

/// A row of `rm_notification_people`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    pub role: Role,
    pub active: bool,
    pub joined_at: i64,
    pub read_up_to: i64,
    pub settings: NotificationSettings,
}

impl Person {
    /// Whether their settings let notifications of new bookings into their
    /// feed.
    pub fn feeds_new_bookings(&self) -> bool {
        self.settings.feed_on(NotificationKind::BookingRequested)
    }
}

/// A row of `rm_notification_bookings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parties {
    pub patient_id: Uuid,
    pub doctor_id: Option<Uuid>,
}

/// What the rules know: people, bookings' parties and payments' patients,
/// and how many audience notifications there are; with what an entry
/// changed, so that only that is written back.
#[derive(Debug, Default)]
pub(crate) struct Knowledge {
    pub people: HashMap<Uuid, Person>,
    pub bookings: HashMap<Uuid, Parties>,
    pub payments: HashMap<Uuid, Uuid>,
    pub broadcasts: i64,
    pub changed_people: HashSet<Uuid>,
    pub changed_bookings: HashSet<Uuid>,
    pub changed_payments: HashSet<Uuid>,
}

impl Knowledge {
    /// Learns from one event and adds the notifications it makes to `out`.
    pub fn event(&mut self, at: At, event: Event, out: &mut Vec<Notification>) {
        match event {
            Event::User(event) => self.user(at, event),
            Event::Booking(BookingEvent::BookingRequested {
                booking_id,
                patient_id,
                ..
            }) => {
                self.bookings.insert(
                    booking_id,
                    Parties {
                        patient_id,
                        doctor_id: None,
                    },
                );
                self.changed_bookings.insert(booking_id);
                self.broadcasts += 1;
                out.push(Notification {
                    id: notification_id(at.position, None),
                    position: at.position,
                    user_id: None,
                    kind: NotificationKind::BookingRequested,
                    booking_id: Some(booking_id),
                    payment_id: None,
                    chat_id: None,
                    messages: None,
                    email: false,
                    broadcast: Some(self.broadcasts),
                    created_at: at.recorded_at,
                });
            }
            Event::Booking(event) => {
                let booking_id = at.aggregate_id;
                let Some(parties) = self.bookings.get(&booking_id).copied() else {
                    return;
                };
                let subject = Subject::Booking(booking_id);
                match event {
                    BookingEvent::DoctorAssigned {
                        doctor_id,
                        assigned_by,
                        ..
                    } => {
                        self.bookings.insert(
                            booking_id,
                            Parties {
                                doctor_id: Some(doctor_id),
                                ..parties
                            },
                        );
                        self.changed_bookings.insert(booking_id);
                        let kind = NotificationKind::BookingAssigned;
                        self.notify(
                            out,
                            at,
                            kind,
                            parties.patient_id,
                            Some(assigned_by),
                            subject,
                        );
                    }
                    BookingEvent::BookingCompleted { doctor_id, .. } => {
                        let kind = NotificationKind::BookingCompleted;
                        self.notify(out, at, kind, parties.patient_id, Some(doctor_id), subject);
                    }
                    BookingEvent::BookingCancelled { cancelled_by, .. } => {
                        let kind = NotificationKind::BookingCancelled;
                        self.notify(
                            out,
                            at,
                            kind,
                            parties.patient_id,
                            Some(cancelled_by),
                            subject,
                        );
                        if let Some(doctor_id) = parties.doctor_id {
                            self.notify(out, at, kind, doctor_id, Some(cancelled_by), subject);
                        }
                    }
                    BookingEvent::BookingRequested { .. } | BookingEvent::BookingPaid { .. } => {}
                }
            }
            Event::Payment(PaymentEvent::PaymentInitiated {
                payment_id,
                patient_id,
                ..
            }) => {
                self.payments.insert(payment_id, patient_id);
                self.changed_payments.insert(payment_id);
            }
            Event::Payment(event) => {
                let payment_id = at.aggregate_id;
                let Some(patient_id) = self.payments.get(&payment_id).copied() else {
                    return;
                };
                let kind = match event {
                    PaymentEvent::PaymentSucceeded { .. } => NotificationKind::PaymentSucceeded,
                    PaymentEvent::PaymentFailed { .. } => NotificationKind::PaymentFailed,
                    PaymentEvent::PaymentRefunded { .. } => NotificationKind::PaymentRefunded,
                    PaymentEvent::PaymentInitiated { .. }
                    | PaymentEvent::RefundRequested { .. } => return,
                };
                self.notify(
                    out,
                    at,
                    kind,
                    patient_id,
                    None,
                    Subject::Payment(payment_id),
                );
            }
            Event::Chat(ChatEvent::UnreadReminded { reminders, .. }) => {
                for reminder in reminders {
                    let subject = Subject::Chat(at.aggregate_id, reminder.messages);
                    self.notify(
                        out,
                        at,
                        NotificationKind::ChatMessages,
                        reminder.user_id,
                        None,
                        subject,
                    );
                }
            }
            Event::Chat(_) => {}
        }
    }

    /// Adds the notification of `kind` for `user_id` to `out`, unless they
    /// are its `actor`, or may not or do not want to see it.
    fn notify(
        &self,
        out: &mut Vec<Notification>,
        at: At,
        kind: NotificationKind,
        user_id: Uuid,
        actor: Option<Uuid>,
        subject: Subject,
    ) {
        if Some(user_id) != actor {
            out.extend(self.notification(at, kind, user_id, subject));
        }
    }

    /// The notification of `kind` for `user_id`, unless they may not or do
    /// not want to see it.
    fn notification(
        &self,
        at: At,
        kind: NotificationKind,
        user_id: Uuid,
        subject: Subject,
    ) -> Option<Notification> {
        let default = NotificationSettings::default();
        let settings = match self.people.get(&user_id) {
            Some(person) if !person.active => return None,
            Some(person) => &person.settings,
            None => &default,
        };
        let (booking_id, payment_id, chat_id, messages) = match subject {
            Subject::Booking(id) => (Some(id), None, None, None),
            Subject::Payment(id) => (None, Some(id), None, None),
            Subject::Chat(id, messages) => {
                if settings.muted(id) {
                    return None;
                }
                let messages = i64::try_from(messages).unwrap_or(i64::MAX);
                (None, None, Some(id), Some(messages))
            }
        };
        settings.feed_on(kind).then(|| Notification {
            id: notification_id(at.position, Some(user_id)),
            position: at.position,
            user_id: Some(user_id),
            kind,
            booking_id,
            payment_id,
            chat_id,
            messages,
            email: settings.email_on(kind),
            broadcast: None,
            created_at: at.recorded_at,
        })
    }

    fn user(&mut self, at: At, event: UserEvent) {
        let user_id = at.aggregate_id;
        match event {
            UserEvent::UserRegistered { role, .. } | UserEvent::UserCreated { role, .. } => {
                self.people.insert(
                    user_id,
                    Person {
                        role,
                        active: true,
                        joined_at: at.position,
                        read_up_to: 0,
                        settings: NotificationSettings::default(),
                    },
                );
            }
            event => {
                let Some(person) = self.people.get_mut(&user_id) else {
                    return;
                };
                match event {
                    // Someone new to a role hears of what comes to it from
                    // then on.
                    UserEvent::RoleChanged { to, .. } => {
                        person.role = to;
                        person.joined_at = at.position;
                    }
                    UserEvent::UserDeactivated { .. } => person.active = false,
                    UserEvent::UserReactivated { .. } => person.active = true,
                    UserEvent::NotificationSettingsChanged { changes, .. } => {
                        person.settings.apply(&changes);
                    }
                    // Nothing after the marker's own event exists yet to
                    // have been read.
                    UserEvent::NotificationsRead { up_to, .. } => {
                        person.read_up_to = person.read_up_to.max(up_to.min(at.position));
                    }
                    _ => return,
                }
            }
        }
        self.changed_people.insert(user_id);
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy)]
enum Subject {
    Booking(Uuid),
    Payment(Uuid),
    /// A chat, and how many messages.
    Chat(Uuid, u64),
}
