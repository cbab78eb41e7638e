//! A patient's request for a doctor's visit, from booking to completion.
//!
//! The visit's status follows pending → assigned → completed, with
//! cancellation possible until the visit is done. Payment is tracked as a
//! separate flag because a visit can be paid for before or after it happens.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{BookingAction, DomainError, Permission, ValidationError};
use crate::user::Named;
use crate::values::{Actor, Address, CallType, Money, Reason, Role};

/// How far ahead a visit can be booked: doctors' calendars do not reach
/// further, and a date years away is a typo.
const BOOKING_HORIZON: chrono::TimeDelta = chrono::TimeDelta::days(365);

/// Where a visit stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BookingStatus {
    /// Waiting for a doctor.
    Pending,
    /// A doctor has taken the visit.
    Assigned,
    /// The doctor has made the visit.
    Completed,
    /// The visit will not happen.
    Cancelled,
}

impl BookingStatus {
    /// Stable lowercase name, matching the serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What someone asks a booking to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingCommand {
    /// A patient asks for a visit.
    Request {
        /// Who asks; becomes the booking's patient.
        actor: Actor,
        /// Caller-chosen id, so retries are detectable.
        booking_id: Uuid,
        /// How soon the doctor is needed.
        call_type: CallType,
        /// Where to go.
        address: Address,
        /// What the visit costs, as quoted to the patient.
        price: Money,
        /// Agreed time, required for scheduled visits.
        scheduled_at: Option<DateTime<Utc>>,
        /// The current time, to reject appointments in the past.
        now: DateTime<Utc>,
    },
    /// Give the visit to a doctor.
    AssignDoctor {
        /// Who asks.
        actor: Actor,
        /// The doctor who will make the visit: an active doctor's account.
        doctor: Named,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// The assigned doctor reports the visit done.
    Complete {
        /// Who asks.
        actor: Actor,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Call the visit off.
    Cancel {
        /// Who asks.
        actor: Actor,
        /// Why, for the audit trail.
        reason: Reason,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Herald records that a payment for the visit succeeded.
    MarkPaid {
        /// The payment that settled the visit.
        payment_id: Uuid,
        /// When the payment succeeded.
        at: DateTime<Utc>,
    },
}

/// What happened to a booking, as stored and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BookingEvent {
    /// A patient asked for a visit.
    BookingRequested {
        /// The booking's id.
        booking_id: Uuid,
        /// Who will receive the visit.
        patient_id: Uuid,
        /// How soon the doctor is needed.
        call_type: CallType,
        /// Where to go.
        address: Address,
        /// What the visit costs.
        price: Money,
        /// Agreed time, if any.
        scheduled_at: Option<DateTime<Utc>>,
        /// When the request was made.
        requested_at: DateTime<Utc>,
    },
    /// A doctor took the visit.
    DoctorAssigned {
        /// The doctor.
        doctor_id: Uuid,
        /// Who made the assignment.
        assigned_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The doctor made the visit.
    BookingCompleted {
        /// The doctor who made it.
        doctor_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The visit was called off.
    BookingCancelled {
        /// Why.
        reason: Reason,
        /// Who called it off.
        cancelled_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The visit was paid for.
    BookingPaid {
        /// The payment that settled it.
        payment_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for BookingEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BookingRequested { .. } => "BookingRequested",
            Self::DoctorAssigned { .. } => "DoctorAssigned",
            Self::BookingCompleted { .. } => "BookingCompleted",
            Self::BookingCancelled { .. } => "BookingCancelled",
            Self::BookingPaid { .. } => "BookingPaid",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// What the booking remembers once requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Requested {
    patient_id: Uuid,
    price: Money,
    status: BookingStatus,
    doctor_id: Option<Uuid>,
    paid_by: Option<Uuid>,
}

/// A visit's decision state: who is involved, what it costs, where it stands
/// and whether it has been paid.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    state: Option<Requested>,
}

impl Booking {
    /// Whether the visit has been requested.
    pub fn exists(&self) -> bool {
        self.state.is_some()
    }

    /// The patient who booked the visit.
    pub fn patient_id(&self) -> Option<Uuid> {
        self.state.as_ref().map(|s| s.patient_id)
    }

    /// The doctor assigned to the visit, if any.
    pub fn doctor_id(&self) -> Option<Uuid> {
        self.state.as_ref().and_then(|s| s.doctor_id)
    }

    /// Where the visit stands.
    pub fn status(&self) -> Option<BookingStatus> {
        self.state.as_ref().map(|s| s.status)
    }

    /// What the visit costs.
    pub fn price(&self) -> Option<&Money> {
        self.state.as_ref().map(|s| &s.price)
    }

    /// Whether a payment for the visit has succeeded.
    pub fn is_paid(&self) -> bool {
        self.paid_by().is_some()
    }

    /// The payment that settled the visit, if any.
    pub fn paid_by(&self) -> Option<Uuid> {
        self.state.as_ref().and_then(|s| s.paid_by)
    }

    /// Decides what a command means for this booking without changing it, so
    /// the rules can be exercised without any infrastructure.
    pub fn decide(&self, command: BookingCommand) -> Result<Vec<BookingEvent>, DomainError> {
        let Some(state) = &self.state else {
            return Self::request(command);
        };
        let transition = |action| DomainError::BookingTransition {
            from: state.status,
            action,
        };
        match command {
            BookingCommand::Request { .. } => Err(DomainError::BookingAlreadyExists),
            BookingCommand::AssignDoctor { actor, doctor, at } => {
                match actor.role {
                    _ if actor.is_admin() => {}
                    Role::Doctor if doctor.user_id == actor.user_id => {}
                    Role::Doctor => return Err(Permission::DoctorsMayOnlyAssignThemselves.into()),
                    _ => return Err(Permission::OnlyAdminsOrDoctorsMayAssign.into()),
                }
                if state.status != BookingStatus::Pending {
                    return Err(transition(BookingAction::AssignDoctor));
                }
                if doctor.active_as != Some(Role::Doctor) {
                    return Err(
                        ValidationError::new("doctor_id", "no active doctor has this id").into(),
                    );
                }
                Ok(vec![BookingEvent::DoctorAssigned {
                    doctor_id: doctor.user_id,
                    assigned_by: actor.user_id,
                    at,
                }])
            }
            BookingCommand::Complete { actor, at } => {
                // Until a doctor is assigned there is nobody who could
                // complete the visit, so the status is the real obstacle.
                let doctor_id = state
                    .doctor_id
                    .ok_or_else(|| transition(BookingAction::Complete))?;
                if actor.role != Role::Doctor || actor.user_id != doctor_id {
                    return Err(Permission::OnlyTheAssignedDoctorMayComplete.into());
                }
                if state.status != BookingStatus::Assigned {
                    return Err(transition(BookingAction::Complete));
                }
                Ok(vec![BookingEvent::BookingCompleted { doctor_id, at }])
            }
            BookingCommand::Cancel { actor, reason, at } => {
                let is_patient = actor.role == Role::Patient && actor.user_id == state.patient_id;
                if !is_patient && !actor.is_admin() {
                    return Err(Permission::OnlyThePatientOrAnAdminMayCancel.into());
                }
                if !matches!(
                    state.status,
                    BookingStatus::Pending | BookingStatus::Assigned
                ) {
                    return Err(transition(BookingAction::Cancel));
                }
                Ok(vec![BookingEvent::BookingCancelled {
                    reason,
                    cancelled_by: actor.user_id,
                    at,
                }])
            }
            BookingCommand::MarkPaid { payment_id, at } => match state.paid_by {
                Some(paid_by) if paid_by == payment_id => Ok(vec![]),
                Some(_) => Err(DomainError::BookingAlreadyPaid),
                None => Ok(vec![BookingEvent::BookingPaid { payment_id, at }]),
            },
        }
    }

    /// Decides on the first command a booking can receive; anything else
    /// targets a booking that does not exist yet.
    fn request(command: BookingCommand) -> Result<Vec<BookingEvent>, DomainError> {
        let BookingCommand::Request {
            actor,
            booking_id,
            call_type,
            address,
            price,
            scheduled_at,
            now,
        } = command
        else {
            return Err(DomainError::BookingNotFound);
        };
        if actor.role != Role::Patient {
            return Err(Permission::OnlyPatientsMayBook.into());
        }
        if call_type == CallType::Scheduled && scheduled_at.is_none() {
            return Err(
                ValidationError::new("scheduled_at", "required for scheduled visits").into(),
            );
        }
        if scheduled_at.is_some_and(|when| when <= now) {
            return Err(ValidationError::new("scheduled_at", "must be in the future").into());
        }
        if scheduled_at.is_some_and(|when| when > now + BOOKING_HORIZON) {
            return Err(ValidationError::new(
                "scheduled_at",
                format!("must be within {} days", BOOKING_HORIZON.num_days()),
            )
            .into());
        }
        Ok(vec![BookingEvent::BookingRequested {
            booking_id,
            patient_id: actor.user_id,
            call_type,
            address,
            price,
            scheduled_at,
            requested_at: now,
        }])
    }
}

impl Aggregate for Booking {
    const TYPE: &'static str = "Booking";
    type Command = BookingCommand;
    type Event = BookingEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let BookingEvent::BookingRequested {
            patient_id, price, ..
        } = event
        {
            self.state = Some(Requested {
                patient_id,
                price,
                status: BookingStatus::Pending,
                doctor_id: None,
                paid_by: None,
            });
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        match event {
            BookingEvent::BookingRequested { .. } => {}
            BookingEvent::DoctorAssigned { doctor_id, .. } => {
                state.doctor_id = Some(doctor_id);
                state.status = BookingStatus::Assigned;
            }
            BookingEvent::BookingCompleted { .. } => state.status = BookingStatus::Completed,
            BookingEvent::BookingCancelled { .. } => state.status = BookingStatus::Cancelled,
            BookingEvent::BookingPaid { payment_id, .. } => state.paid_by = Some(payment_id),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::values::Currency;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    type Given = Vec<BookingEvent>;

    const PATIENT: u128 = 1;
    const DOCTOR: u128 = 2;
    const OTHER_DOCTOR: u128 = 3;
    const OTHER_PATIENT: u128 = 4;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn as_role(n: u128, role: Role) -> Actor {
        Actor::new(id(n), role)
    }

    fn patient() -> Actor {
        as_role(PATIENT, Role::Patient)
    }

    fn doctor() -> Actor {
        as_role(DOCTOR, Role::Doctor)
    }

    fn admin() -> Actor {
        as_role(100, Role::Admin)
    }

    fn price() -> Money {
        Money::new(150_000, Currency::rub()).unwrap()
    }

    fn address() -> Address {
        Address::parse("Tverskaya 1, Moscow").unwrap()
    }

    fn reason() -> Reason {
        Reason::parse("feeling better").unwrap()
    }

    fn request(actor: Actor, call_type: CallType, scheduled_at: Option<i64>) -> BookingCommand {
        BookingCommand::Request {
            actor,
            booking_id: id(500),
            call_type,
            address: address(),
            price: price(),
            scheduled_at: scheduled_at.map(|mins| now() + Duration::minutes(mins)),
            now: now(),
        }
    }

    fn requested_with(scheduled_at: Option<i64>, call_type: CallType) -> BookingEvent {
        BookingEvent::BookingRequested {
            booking_id: id(500),
            patient_id: id(PATIENT),
            call_type,
            address: address(),
            price: price(),
            scheduled_at: scheduled_at.map(|mins| now() + Duration::minutes(mins)),
            requested_at: now(),
        }
    }

    fn pending() -> Given {
        vec![requested_with(None, CallType::Urgent)]
    }

    fn assigned() -> Given {
        let mut given = pending();
        given.push(BookingEvent::DoctorAssigned {
            doctor_id: id(DOCTOR),
            assigned_by: id(DOCTOR),
            at: now(),
        });
        given
    }

    fn completed() -> Given {
        let mut given = assigned();
        given.push(BookingEvent::BookingCompleted {
            doctor_id: id(DOCTOR),
            at: now(),
        });
        given
    }

    fn cancelled_from(mut given: Given) -> Given {
        given.push(BookingEvent::BookingCancelled {
            reason: reason(),
            cancelled_by: id(PATIENT),
            at: now(),
        });
        given
    }

    fn paid(mut given: Given, payment: u128) -> Given {
        given.push(BookingEvent::BookingPaid {
            payment_id: id(payment),
            at: now(),
        });
        given
    }

    fn assign(actor: Actor, doctor: u128) -> BookingCommand {
        assign_named(actor, id(doctor), Some(Role::Doctor))
    }

    fn assign_named(actor: Actor, doctor: Uuid, active_as: Option<Role>) -> BookingCommand {
        BookingCommand::AssignDoctor {
            actor,
            doctor: Named {
                user_id: doctor,
                active_as,
            },
            at: now(),
        }
    }

    fn complete(actor: Actor) -> BookingCommand {
        BookingCommand::Complete { actor, at: now() }
    }

    fn cancel(actor: Actor) -> BookingCommand {
        BookingCommand::Cancel {
            actor,
            reason: reason(),
            at: now(),
        }
    }

    fn mark_paid(payment: u128) -> BookingCommand {
        BookingCommand::MarkPaid {
            payment_id: id(payment),
            at: now(),
        }
    }

    async fn expect(given: Given, command: BookingCommand, events: Vec<BookingEvent>) {
        TestFramework::<Booking>::with(())
            .given(given)
            .when_async(command)
            .await
            .then_expect_events(events);
    }

    async fn reject(given: Given, command: BookingCommand, error: DomainError) {
        TestFramework::<Booking>::with(())
            .given(given)
            .when_async(command)
            .await
            .then_expect_error(error);
    }

    fn forbidden(permission: Permission) -> DomainError {
        DomainError::Forbidden(permission)
    }

    fn transition(from: BookingStatus, action: BookingAction) -> DomainError {
        DomainError::BookingTransition { from, action }
    }

    fn scheduled_at_error(message: &str) -> DomainError {
        ValidationError::new("scheduled_at", message).into()
    }

    // --- Request ---

    #[tokio::test]
    async fn a_patient_can_request_an_urgent_visit() {
        expect(
            vec![],
            request(patient(), CallType::Urgent, None),
            pending(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_patient_can_schedule_a_visit_in_the_future() {
        let command = request(patient(), CallType::Scheduled, Some(60));
        let event = requested_with(Some(60), CallType::Scheduled);
        expect(vec![], command, vec![event]).await;
    }

    #[tokio::test]
    async fn only_patients_can_book() {
        for role in [Role::Doctor, Role::Admin, Role::Auditor, Role::System] {
            let command = request(as_role(PATIENT, role), CallType::Urgent, None);
            reject(vec![], command, forbidden(Permission::OnlyPatientsMayBook)).await;
        }
    }

    #[tokio::test]
    async fn a_booking_cannot_be_requested_twice() {
        let command = request(patient(), CallType::Urgent, None);
        reject(pending(), command, DomainError::BookingAlreadyExists).await;
    }

    #[tokio::test]
    async fn a_scheduled_visit_needs_a_time() {
        let command = request(patient(), CallType::Scheduled, None);
        let error = scheduled_at_error("required for scheduled visits");
        reject(vec![], command, error).await;
    }

    #[tokio::test]
    async fn a_visit_cannot_be_scheduled_now_or_in_the_past() {
        for minutes in [0, -1] {
            let command = request(patient(), CallType::Consultation, Some(minutes));
            let error = scheduled_at_error("must be in the future");
            reject(vec![], command, error).await;
        }
    }

    #[tokio::test]
    async fn a_visit_cannot_be_scheduled_more_than_a_year_ahead() {
        let a_year_and_a_minute = 365 * 24 * 60 + 1;
        let command = request(patient(), CallType::Scheduled, Some(a_year_and_a_minute));
        reject(
            vec![],
            command,
            scheduled_at_error("must be within 365 days"),
        )
        .await;
        let command = request(patient(), CallType::Scheduled, Some(365 * 24 * 60));
        TestFramework::<Booking>::with(())
            .given_no_previous_events()
            .when_async(command)
            .await
            .inspect_result()
            .unwrap();
    }

    #[tokio::test]
    async fn commands_on_a_missing_booking_are_not_found() {
        for command in [
            assign(admin(), DOCTOR),
            complete(doctor()),
            cancel(admin()),
            mark_paid(7),
        ] {
            reject(vec![], command, DomainError::BookingNotFound).await;
        }
    }

    // --- AssignDoctor ---

    fn assigned_event(doctor: u128, by: Actor) -> Vec<BookingEvent> {
        vec![BookingEvent::DoctorAssigned {
            doctor_id: id(doctor),
            assigned_by: by.user_id,
            at: now(),
        }]
    }

    #[tokio::test]
    async fn a_doctor_can_take_a_pending_visit() {
        let events = assigned_event(DOCTOR, doctor());
        expect(pending(), assign(doctor(), DOCTOR), events).await;
    }

    #[tokio::test]
    async fn an_admin_can_assign_any_doctor() {
        let events = assigned_event(OTHER_DOCTOR, admin());
        expect(pending(), assign(admin(), OTHER_DOCTOR), events).await;
        let events = assigned_event(DOCTOR, Actor::system());
        expect(pending(), assign(Actor::system(), DOCTOR), events).await;
    }

    #[tokio::test]
    async fn a_doctor_cannot_assign_another_doctor() {
        let error = forbidden(Permission::DoctorsMayOnlyAssignThemselves);
        reject(pending(), assign(doctor(), OTHER_DOCTOR), error).await;
    }

    #[tokio::test]
    async fn patients_and_auditors_cannot_assign_doctors() {
        let error = forbidden(Permission::OnlyAdminsOrDoctorsMayAssign);
        reject(pending(), assign(patient(), DOCTOR), error.clone()).await;
        let auditor = as_role(DOCTOR, Role::Auditor);
        reject(pending(), assign(auditor, DOCTOR), error).await;
    }

    #[tokio::test]
    async fn only_an_active_doctor_can_be_assigned() {
        let error = DomainError::Invalid(ValidationError::new(
            "doctor_id",
            "no active doctor has this id",
        ));
        for active_as in [None, Some(Role::Patient), Some(Role::Admin)] {
            let command = assign_named(admin(), id(OTHER_DOCTOR), active_as);
            reject(pending(), command, error.clone()).await;
        }
        // A deactivated doctor cannot take a visit with a token still valid.
        reject(pending(), assign_named(doctor(), id(DOCTOR), None), error).await;
    }

    #[tokio::test]
    async fn a_doctor_can_only_be_assigned_to_a_pending_visit() {
        for (given, from) in [
            (assigned(), BookingStatus::Assigned),
            (completed(), BookingStatus::Completed),
            (cancelled_from(pending()), BookingStatus::Cancelled),
        ] {
            let error = transition(from, BookingAction::AssignDoctor);
            reject(given, assign(admin(), DOCTOR), error).await;
        }
    }

    // --- Complete ---

    #[tokio::test]
    async fn the_assigned_doctor_can_complete_the_visit() {
        let event = BookingEvent::BookingCompleted {
            doctor_id: id(DOCTOR),
            at: now(),
        };
        expect(assigned(), complete(doctor()), vec![event]).await;
    }

    #[tokio::test]
    async fn nobody_but_the_assigned_doctor_can_complete_the_visit() {
        let error = forbidden(Permission::OnlyTheAssignedDoctorMayComplete);
        for actor in [
            as_role(OTHER_DOCTOR, Role::Doctor),
            admin(),
            patient(),
            as_role(DOCTOR, Role::Patient),
        ] {
            reject(assigned(), complete(actor), error.clone()).await;
        }
    }

    #[tokio::test]
    async fn only_an_assigned_visit_can_be_completed() {
        for (given, from) in [
            (pending(), BookingStatus::Pending),
            (completed(), BookingStatus::Completed),
            (cancelled_from(assigned()), BookingStatus::Cancelled),
            (cancelled_from(pending()), BookingStatus::Cancelled),
        ] {
            let error = transition(from, BookingAction::Complete);
            reject(given, complete(doctor()), error).await;
        }
    }

    // --- Cancel ---

    fn cancelled_by(actor: Actor) -> Vec<BookingEvent> {
        vec![BookingEvent::BookingCancelled {
            reason: reason(),
            cancelled_by: actor.user_id,
            at: now(),
        }]
    }

    #[tokio::test]
    async fn the_patient_can_cancel_a_pending_or_assigned_visit() {
        expect(pending(), cancel(patient()), cancelled_by(patient())).await;
        expect(assigned(), cancel(patient()), cancelled_by(patient())).await;
    }

    #[tokio::test]
    async fn an_admin_can_cancel_any_open_visit() {
        expect(assigned(), cancel(admin()), cancelled_by(admin())).await;
    }

    #[tokio::test]
    async fn another_patient_or_the_doctor_cannot_cancel() {
        let error = forbidden(Permission::OnlyThePatientOrAnAdminMayCancel);
        let other = as_role(OTHER_PATIENT, Role::Patient);
        reject(assigned(), cancel(other), error.clone()).await;
        reject(assigned(), cancel(doctor()), error).await;
    }

    #[tokio::test]
    async fn a_completed_or_cancelled_visit_cannot_be_cancelled() {
        for (given, from) in [
            (completed(), BookingStatus::Completed),
            (cancelled_from(pending()), BookingStatus::Cancelled),
        ] {
            let error = transition(from, BookingAction::Cancel);
            reject(given, cancel(patient()), error).await;
        }
    }

    // --- MarkPaid ---

    #[tokio::test]
    async fn a_booking_can_be_marked_paid_in_any_status() {
        for given in [
            pending(),
            assigned(),
            completed(),
            cancelled_from(pending()),
        ] {
            let event = BookingEvent::BookingPaid {
                payment_id: id(7),
                at: now(),
            };
            expect(given, mark_paid(7), vec![event]).await;
        }
    }

    #[tokio::test]
    async fn marking_paid_again_by_the_same_payment_records_nothing() {
        expect(paid(assigned(), 7), mark_paid(7), vec![]).await;
    }

    #[tokio::test]
    async fn a_second_payment_cannot_settle_a_paid_booking() {
        reject(
            paid(assigned(), 7),
            mark_paid(8),
            DomainError::BookingAlreadyPaid,
        )
        .await;
    }

    // --- State ---

    #[test]
    fn state_follows_the_lifecycle() {
        let mut booking = Booking::default();
        assert!(!booking.exists());
        assert_eq!(booking.status(), None);
        for event in paid(completed(), 7) {
            booking.apply(event);
        }
        assert!(booking.exists());
        assert_eq!(booking.patient_id(), Some(id(PATIENT)));
        assert_eq!(booking.doctor_id(), Some(id(DOCTOR)));
        assert_eq!(booking.status(), Some(BookingStatus::Completed));
        assert_eq!(booking.price(), Some(&price()));
        assert!(booking.is_paid());
        assert_eq!(booking.paid_by(), Some(id(7)));
    }

    #[test]
    fn stored_events_are_revalidated_on_load() {
        let event = requested_with(None, CallType::Urgent);
        let json = serde_json::to_value(&event).unwrap();
        let fields = &json["BookingRequested"];
        assert_eq!(fields["call_type"], "urgent");
        assert_eq!(
            fields["price"],
            serde_json::json!({"amount_minor": 150_000, "currency": "RUB"})
        );
        assert_eq!(
            serde_json::from_value::<BookingEvent>(json.clone()).unwrap(),
            event
        );

        let mut tampered = json;
        tampered["BookingRequested"]["price"]["amount_minor"] = serde_json::json!(0);
        assert!(serde_json::from_value::<BookingEvent>(tampered).is_err());
    }

    #[test]
    fn statuses_serialize_in_lowercase() {
        assert_eq!(
            serde_json::to_string(&BookingStatus::Cancelled).unwrap(),
            "\"cancelled\""
        );
        assert_eq!(BookingStatus::Assigned.as_str(), "assigned");
        assert_eq!(pending()[0].event_type(), "BookingRequested");
        assert_eq!(pending()[0].event_version(), "1");
    }
}
