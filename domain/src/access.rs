//! Who may see what. The reads, the event stream and anything else that shows
//! an aggregate to someone ask here, so a rule has one home:
//!
//! - a chat: its members, and admins, who moderate chats;
//! - a booking: its patient, the doctor assigned to it, and admins; auditors
//!   read the event log, not bookings;
//! - a payment: the patient who pays, and admins;
//! - a user's account changes: the user themself, and admins;
//! - whether someone is online: whoever shares a chat with them, and admins.
//!
//! Herald's own actor counts as an admin. What an aggregate's parties are is
//! read from its own events ([`Parties::observe`]) or from a read model's row.

use std::collections::HashSet;

use uuid::Uuid;

use crate::booking::BookingEvent;
use crate::chat::ChatEvent;
use crate::payment::PaymentEvent;
use crate::user::UserEvent;
use crate::values::{Actor, Role};
use crate::Permission;

/// The kinds of aggregate, by the names the event store gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    /// [`crate::chat::Chat`].
    Chat,
    /// [`crate::booking::Booking`].
    Booking,
    /// [`crate::payment::Payment`].
    Payment,
    /// [`crate::user::User`].
    User,
}

impl AggregateKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Chat, Self::Booking, Self::Payment, Self::User];

    /// The name events of this kind are stored under: the aggregate's `TYPE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Chat => <crate::chat::Chat as cqrs_es::Aggregate>::TYPE,
            Self::Booking => <crate::booking::Booking as cqrs_es::Aggregate>::TYPE,
            Self::Payment => <crate::payment::Payment as cqrs_es::Aggregate>::TYPE,
            Self::User => <crate::user::User as cqrs_es::Aggregate>::TYPE,
        }
    }

    /// The kind stored under `name`, if Herald has one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Which bookings someone may list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingScope {
    /// Those of this patient.
    PatientOf(Uuid),
    /// Those assigned to this doctor.
    AssignedTo(Uuid),
    /// All of them.
    All,
}

impl BookingScope {
    /// The bookings `actor` may see.
    pub fn of(actor: Actor) -> Result<Self, Permission> {
        match actor.role {
            Role::Patient => Ok(Self::PatientOf(actor.user_id)),
            Role::Doctor => Ok(Self::AssignedTo(actor.user_id)),
            Role::Admin | Role::System => Ok(Self::All),
            Role::Auditor => Err(Permission::AuditorsReadTheLogNotBookings),
        }
    }

    /// Whether a booking of `patient`, assigned to `doctor`, is in scope.
    pub fn includes(self, patient: Uuid, doctor: Option<Uuid>) -> bool {
        match self {
            Self::PatientOf(user) => patient == user,
            Self::AssignedTo(user) => doctor == Some(user),
            Self::All => true,
        }
    }
}

/// Whether `actor` may see a chat they are (`is_member`) or are not a member of.
pub fn may_see_chat(actor: Actor, is_member: bool) -> bool {
    is_member || actor.is_admin()
}

/// Whether `actor` may download an attachment of a chat they are
/// (`is_member`) or are not a member of: one a message still shown carries
/// (`sent`), whoever may see the chat; one no message carries yet, only the
/// member who announced it.
pub fn may_download_attachment(
    actor: Actor,
    is_member: bool,
    sent: bool,
    announced_by: Uuid,
) -> bool {
    if sent {
        may_see_chat(actor, is_member)
    } else {
        is_member && announced_by == actor.user_id
    }
}

/// Whether `actor` may see whether someone is online and when they were last
/// seen: people who share a chat with them (`shares_a_chat`), and admins.
/// Presence says when someone uses the app, so it goes no further than the
/// chats that already show them.
pub fn may_see_presence(actor: Actor, shares_a_chat: bool) -> bool {
    shares_a_chat || actor.is_admin()
}

/// Whether someone may say they are typing in a chat: its members only. An
/// admin who is not a member writes nothing there, so types nothing either.
pub fn may_type_in_chat(is_member: bool) -> bool {
    is_member
}

/// Whether `actor` may see a booking of `patient`, assigned to `doctor`.
pub fn may_see_booking(actor: Actor, patient: Uuid, doctor: Option<Uuid>) -> bool {
    BookingScope::of(actor).is_ok_and(|scope| scope.includes(patient, doctor))
}

/// Whether `actor` may manage users: open their accounts, list them, change
/// their role and access. Only admins (and Herald itself) may.
pub fn may_manage_users(actor: Actor) -> Result<(), Permission> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(Permission::OnlyAdminsManageUsers)
    }
}

/// Whether `actor` may manage integrations: the webhooks notifications are
/// posted to. Only admins may.
pub fn may_manage_integrations(actor: Actor) -> Result<(), Permission> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(Permission::OnlyAdminsManageIntegrations)
    }
}

/// Whether `actor` may see the dashboard's business figures: bookings,
/// payments, revenue and messages over time. Only admins may.
pub fn may_see_business_figures(actor: Actor) -> Result<(), Permission> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(Permission::OnlyAdminsSeeBusinessFigures)
    }
}

/// Whether `actor` may see the pipeline's health: the relay, each
/// projection's lag, dead letters and the command rate. Admins and auditors
/// may; it shows positions and counts, no event's content.
pub fn may_see_pipeline(actor: Actor) -> Result<(), Permission> {
    if actor.is_admin() || actor.role == Role::Auditor {
        Ok(())
    } else {
        Err(Permission::OnlyAdminsAndAuditorsSeeThePipeline)
    }
}

/// Whether `actor` may apply a follower's dead letters again. Only admins may.
pub fn may_retry_dead_letters(actor: Actor) -> Result<(), Permission> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(Permission::OnlyAdminsRetryDeadLetters)
    }
}

/// Whether `actor` may see the payments `patient` makes.
pub fn may_see_payment(actor: Actor, patient: Uuid) -> bool {
    actor.is_admin() || (actor.role == Role::Patient && actor.user_id == patient)
}

/// The people one aggregate concerns, as its events name them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parties {
    /// A chat's members.
    pub members: HashSet<Uuid>,
    /// A booking's or a payment's patient.
    pub patient: Option<Uuid>,
    /// The doctor assigned to a booking.
    pub doctor: Option<Uuid>,
    /// The user an account is.
    pub user: Option<Uuid>,
}

/// What [`Parties::observe`] could not read.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Herald stores no aggregate of this name.
    #[error("unknown aggregate type {0}")]
    UnknownKind(String),
    /// The payload is not the event its type says.
    #[error(transparent)]
    Decode(#[from] serde_json::Error),
}

impl Parties {
    /// Moves the parties past one stored event of their aggregate, brought up
    /// to date by [`crate::upcast::decode`] first.
    pub fn observe(
        &mut self,
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: serde_json::Value,
    ) -> Result<(), ObserveError> {
        let kind = AggregateKind::parse(aggregate_type)
            .ok_or_else(|| ObserveError::UnknownKind(aggregate_type.to_owned()))?;
        match kind {
            AggregateKind::Chat => {
                let event: ChatEvent = crate::upcast::decode(event_type, event_version, payload)?;
                event.apply_to_members(&mut self.members);
            }
            AggregateKind::Booking => {
                match crate::upcast::decode(event_type, event_version, payload)? {
                    BookingEvent::BookingRequested { patient_id, .. } => {
                        self.patient = Some(patient_id);
                    }
                    BookingEvent::DoctorAssigned { doctor_id, .. } => self.doctor = Some(doctor_id),
                    _ => {}
                }
            }
            AggregateKind::Payment => {
                if let PaymentEvent::PaymentInitiated { patient_id, .. } =
                    crate::upcast::decode(event_type, event_version, payload)?
                {
                    self.patient = Some(patient_id);
                }
            }
            AggregateKind::User => match crate::upcast::decode(event_type, event_version, payload)?
            {
                UserEvent::UserRegistered { user_id, .. }
                | UserEvent::UserCreated { user_id, .. } => {
                    self.user = Some(user_id);
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// Whether `actor` may see an aggregate of `kind` with these parties.
    pub fn visible_to(&self, kind: AggregateKind, actor: Actor) -> bool {
        match kind {
            AggregateKind::Chat => may_see_chat(actor, self.members.contains(&actor.user_id)),
            AggregateKind::Booking => self
                .patient
                .is_some_and(|patient| may_see_booking(actor, patient, self.doctor)),
            AggregateKind::Payment => self
                .patient
                .is_some_and(|patient| may_see_payment(actor, patient)),
            AggregateKind::User => actor.is_admin() || self.user == Some(actor.user_id),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn observe(parties: &mut Parties, aggregate_type: &str, payload: serde_json::Value) {
        let event_type = payload
            .as_object()
            .and_then(|event| event.keys().next().cloned())
            .unwrap();
        parties
            .observe(aggregate_type, &event_type, "1", payload)
            .unwrap();
    }

    fn booking_requested(patient: Uuid) -> serde_json::Value {
        json!({ "BookingRequested": {
            "booking_id": Uuid::new_v4(), "patient_id": patient, "call_type": "urgent",
            "address": "Tverskaya 1, Moscow", "price": { "amount_minor": 1, "currency": "RUB" },
            "scheduled_at": null, "requested_at": "2026-01-01T00:00:00Z" } })
    }

    #[test]
    fn a_doctor_sees_a_booking_only_once_assigned_to_it() {
        let (patient, doctor) = (Uuid::new_v4(), Uuid::new_v4());
        let mut parties = Parties::default();
        observe(&mut parties, "Booking", booking_requested(patient));
        let as_doctor = Actor::new(doctor, Role::Doctor);
        assert!(parties.visible_to(AggregateKind::Booking, Actor::new(patient, Role::Patient)));
        assert!(!parties.visible_to(AggregateKind::Booking, as_doctor));
        observe(
            &mut parties,
            "Booking",
            json!({ "DoctorAssigned": { "doctor_id": doctor, "assigned_by": doctor,
                                         "at": "2026-01-01T00:00:00Z" } }),
        );
        assert!(parties.visible_to(AggregateKind::Booking, as_doctor));
        assert!(!parties.visible_to(AggregateKind::Payment, as_doctor));
    }

    #[test]
    fn a_sent_attachment_is_for_the_chat_and_an_unsent_one_for_its_uploader() {
        let alice = Actor::new(Uuid::from_u128(1), Role::Patient);
        let admin = Actor::new(Uuid::from_u128(2), Role::Admin);
        let bob = Uuid::from_u128(3);
        assert!(may_download_attachment(alice, true, true, bob));
        assert!(may_download_attachment(admin, false, true, bob));
        assert!(!may_download_attachment(alice, false, true, alice.user_id));
        assert!(may_download_attachment(alice, true, false, alice.user_id));
        assert!(!may_download_attachment(alice, true, false, bob));
        assert!(!may_download_attachment(admin, false, false, bob));
    }

    #[test]
    fn a_removed_member_no_longer_sees_the_chat_and_admins_always_do() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut parties = Parties::default();
        observe(
            &mut parties,
            "Chat",
            json!({ "ChatCreated": { "chat_id": Uuid::new_v4(), "kind": "group", "title": null,
                                      "members": [a, b], "created_by": a,
                                      "created_at": "2026-01-01T00:00:00Z" } }),
        );
        let b_actor = Actor::new(b, Role::Patient);
        assert!(parties.visible_to(AggregateKind::Chat, b_actor));
        observe(
            &mut parties,
            "Chat",
            json!({ "MemberRemoved": { "user_id": b, "removed_by": a,
                                        "at": "2026-01-01T00:00:00Z" } }),
        );
        assert!(!parties.visible_to(AggregateKind::Chat, b_actor));
        let admin = Actor::new(Uuid::new_v4(), Role::Admin);
        assert!(parties.visible_to(AggregateKind::Chat, admin));
    }

    #[test]
    fn auditors_list_no_bookings_and_patients_only_their_own() {
        let patient = Actor::new(Uuid::new_v4(), Role::Patient);
        assert_eq!(
            BookingScope::of(Actor::new(Uuid::new_v4(), Role::Auditor)),
            Err(Permission::AuditorsReadTheLogNotBookings)
        );
        assert_eq!(
            BookingScope::of(patient),
            Ok(BookingScope::PatientOf(patient.user_id))
        );
        assert!(may_see_booking(patient, patient.user_id, None));
        assert!(!may_see_booking(patient, Uuid::new_v4(), None));
        assert!(may_see_payment(Actor::system(), patient.user_id));
    }

    #[test]
    fn an_accounts_changes_are_seen_by_the_user_and_admins_only() {
        let user = Uuid::new_v4();
        let mut parties = Parties::default();
        let created = json!({ "UserCreated": {
            "user_id": user, "role": "doctor", "created_by": Uuid::nil(), "at": "2026-01-01T00:00:00Z"
        }});
        observe(&mut parties, "User", created);
        assert!(parties.visible_to(AggregateKind::User, Actor::new(user, Role::Doctor)));
        assert!(parties.visible_to(AggregateKind::User, Actor::new(Uuid::new_v4(), Role::Admin)));
        for role in [Role::Doctor, Role::Patient, Role::Auditor] {
            assert!(!parties.visible_to(AggregateKind::User, Actor::new(Uuid::new_v4(), role)));
        }
    }

    #[test]
    fn every_kind_is_named_as_its_aggregate_is_stored() {
        for kind in AggregateKind::ALL {
            assert_eq!(AggregateKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AggregateKind::parse("Ward"), None);
    }
}
