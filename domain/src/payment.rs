//! One attempt by a patient to pay for a booking, and its refund.
//!
//! Provider notifications arrive late, twice or out of order, so the
//! notification commands are idempotent: repeating one that no longer
//! applies records nothing instead of failing.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DomainError, PaymentAction, Permission, ValidationError};
use crate::values::{Actor, Money, PaymentMethod, Reason, Role};

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Waiting for the provider.
    Pending,
    /// The money was taken.
    Succeeded,
    /// The provider declined or the patient abandoned it.
    Failed,
    /// A refund was asked for and is being processed.
    RefundPending,
    /// The money was returned.
    Refunded,
}

impl PaymentStatus {
    /// Stable snake_case name, matching the serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RefundPending => "refund_pending",
            Self::Refunded => "refunded",
        }
    }
}

impl std::fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller looked up about the booking before asking to pay, so the
/// payment can decide without reaching into another aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingFacts {
    /// The booking to pay for.
    pub booking_id: Uuid,
    /// The patient who booked it.
    pub patient_id: Uuid,
    /// What it costs.
    pub price: Money,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Whether a payment for it already succeeded.
    pub paid: bool,
    /// Its pending or succeeded payment, if any. A booking has at most one such
    /// payment, so that paying twice by accident cannot charge twice.
    pub active_payment: Option<Uuid>,
}

/// What the payment provider answered when asked to take the money: its
/// reference for the charge and the page where the patient confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCharge {
    /// The provider's reference for the charge.
    pub provider_payment_id: String,
    /// Where the patient confirms the charge.
    pub confirmation_url: String,
}

/// What someone asks a payment to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// A patient starts paying for their booking.
    Initiate {
        /// Who asks.
        actor: Actor,
        /// Caller-chosen id, so retries are detectable.
        payment_id: Uuid,
        /// The booking as the caller found it.
        booking: BookingFacts,
        /// How the patient pays.
        method: PaymentMethod,
        /// The charge the provider opened for this payment.
        charge: ProviderCharge,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// The provider reports the money was taken.
    MarkSucceeded {
        /// The provider's reference for the charge.
        provider_payment_id: String,
        /// What the provider says it charged.
        amount: Money,
        /// When the provider reported it.
        at: DateTime<Utc>,
    },
    /// The provider reports the charge did not go through.
    MarkFailed {
        /// The provider's reference for the charge.
        provider_payment_id: String,
        /// When the provider reported it.
        at: DateTime<Utc>,
    },
    /// An operator asks for the money to be returned.
    RequestRefund {
        /// Who asks.
        actor: Actor,
        /// Why, for the audit trail.
        reason: Reason,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// The provider reports the money was returned.
    MarkRefunded {
        /// The provider's reference for the refund.
        provider_refund_id: String,
        /// The provider's reference for the charge it returned.
        provider_payment_id: String,
        /// What the provider says it returned: only whole refunds exist.
        amount: Money,
        /// When the provider reported it.
        at: DateTime<Utc>,
    },
}

/// What happened to a payment, as stored and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// A patient started paying.
    PaymentInitiated {
        /// The payment's id.
        payment_id: Uuid,
        /// The booking paid for.
        booking_id: Uuid,
        /// The patient paying.
        patient_id: Uuid,
        /// How they pay.
        method: PaymentMethod,
        /// What is charged: the booking's price.
        amount: Money,
        /// When.
        initiated_at: DateTime<Utc>,
        /// The provider's reference for the charge; absent from payments
        /// recorded before providers were asked at initiation.
        #[serde(default)]
        provider_payment_id: Option<String>,
        /// Where the patient confirms the charge; absent like the reference.
        #[serde(default)]
        confirmation_url: Option<String>,
    },
    /// The money was taken.
    PaymentSucceeded {
        /// The provider's reference for the charge.
        provider_payment_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The charge did not go through.
    PaymentFailed {
        /// The provider's reference for the charge.
        provider_payment_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A refund was asked for.
    RefundRequested {
        /// Why.
        reason: Reason,
        /// Who asked.
        requested_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The money was returned.
    PaymentRefunded {
        /// The provider's reference for the refund.
        provider_refund_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl PaymentEvent {
    /// The status a payment is in once this event has happened to it: every
    /// payment event moves it to one.
    pub fn status_after(&self) -> PaymentStatus {
        match self {
            Self::PaymentInitiated { .. } => PaymentStatus::Pending,
            Self::PaymentSucceeded { .. } => PaymentStatus::Succeeded,
            Self::PaymentFailed { .. } => PaymentStatus::Failed,
            Self::RefundRequested { .. } => PaymentStatus::RefundPending,
            Self::PaymentRefunded { .. } => PaymentStatus::Refunded,
        }
    }
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PaymentInitiated { .. } => "PaymentInitiated",
            Self::PaymentSucceeded { .. } => "PaymentSucceeded",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::RefundRequested { .. } => "RefundRequested",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// What the payment remembers once initiated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Initiated {
    booking_id: Uuid,
    patient_id: Uuid,
    amount: Money,
    status: PaymentStatus,
    provider_payment_id: Option<String>,
}

/// A payment's decision state: what it is for, how much, and where it stands.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    state: Option<Initiated>,
}

/// Provider references are opaque, but an empty one would be useless for
/// reconciliation.
fn provider_reference(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        Err(ValidationError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

impl Initiated {
    /// Only the charge Herald itself opened at the provider settles this
    /// payment: a notification about any other charge, even one whose metadata
    /// names this payment, is refused, so nobody can pay with a charge of
    /// their own making.
    fn check_charge(&self, provider_payment_id: &str) -> Result<(), DomainError> {
        if self.provider_payment_id.as_deref() == Some(provider_payment_id) {
            Ok(())
        } else {
            Err(DomainError::UnknownProviderCharge)
        }
    }
}

impl Payment {
    /// Whether the payment has been initiated.
    pub fn exists(&self) -> bool {
        self.state.is_some()
    }

    /// The booking being paid for.
    pub fn booking_id(&self) -> Option<Uuid> {
        self.state.as_ref().map(|s| s.booking_id)
    }

    /// The patient paying.
    pub fn patient_id(&self) -> Option<Uuid> {
        self.state.as_ref().map(|s| s.patient_id)
    }

    /// Where the payment stands.
    pub fn status(&self) -> Option<PaymentStatus> {
        self.state.as_ref().map(|s| s.status)
    }

    /// What is charged.
    pub fn amount(&self) -> Option<&Money> {
        self.state.as_ref().map(|s| &s.amount)
    }

    /// The provider's reference for the charge, once it has reported one.
    pub fn provider_payment_id(&self) -> Option<&str> {
        self.state
            .as_ref()
            .and_then(|s| s.provider_payment_id.as_deref())
    }

    /// Decides what a command means for this payment without changing it, so
    /// the rules can be exercised without any infrastructure.
    pub fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        let Some(state) = &self.state else {
            return Self::initiate(command);
        };
        let transition = |action| DomainError::PaymentTransition {
            from: state.status,
            action,
        };
        match command {
            PaymentCommand::Initiate { .. } => Err(DomainError::PaymentAlreadyExists),
            PaymentCommand::MarkSucceeded {
                provider_payment_id,
                amount,
                at,
            } => {
                provider_reference("provider_payment_id", &provider_payment_id)?;
                state.check_charge(&provider_payment_id)?;
                match state.status {
                    PaymentStatus::Pending if amount != state.amount => {
                        Err(DomainError::AmountMismatch {
                            expected: state.amount.clone(),
                            received: amount,
                        })
                    }
                    PaymentStatus::Pending => Ok(vec![PaymentEvent::PaymentSucceeded {
                        provider_payment_id,
                        at,
                    }]),
                    PaymentStatus::Succeeded
                    | PaymentStatus::RefundPending
                    | PaymentStatus::Refunded => Ok(vec![]),
                    PaymentStatus::Failed => Err(transition(PaymentAction::Succeed)),
                }
            }
            PaymentCommand::MarkFailed {
                provider_payment_id,
                at,
            } => {
                provider_reference("provider_payment_id", &provider_payment_id)?;
                state.check_charge(&provider_payment_id)?;
                if state.status != PaymentStatus::Pending {
                    return Ok(vec![]);
                }
                Ok(vec![PaymentEvent::PaymentFailed {
                    provider_payment_id,
                    at,
                }])
            }
            PaymentCommand::RequestRefund { actor, reason, at } => {
                if !actor.is_admin() {
                    return Err(Permission::OnlyAdminsMayRefund.into());
                }
                if state.status != PaymentStatus::Succeeded {
                    return Err(transition(PaymentAction::RequestRefund));
                }
                Ok(vec![PaymentEvent::RefundRequested {
                    reason,
                    requested_by: actor.user_id,
                    at,
                }])
            }
            PaymentCommand::MarkRefunded {
                provider_refund_id,
                provider_payment_id,
                amount,
                at,
            } => {
                provider_reference("provider_refund_id", &provider_refund_id)?;
                state.check_charge(&provider_payment_id)?;
                match state.status {
                    PaymentStatus::RefundPending if amount != state.amount => {
                        Err(DomainError::AmountMismatch {
                            expected: state.amount.clone(),
                            received: amount,
                        })
                    }
                    PaymentStatus::RefundPending => Ok(vec![PaymentEvent::PaymentRefunded {
                        provider_refund_id,
                        at,
                    }]),
                    PaymentStatus::Refunded => Ok(vec![]),
                    _ => Err(transition(PaymentAction::CompleteRefund)),
                }
            }
        }
    }

    /// Whether `actor` may start paying for `booking`. Initiating checks it
    /// again; callers ask first so that no provider charge is opened for a
    /// payment that would be refused.
    pub fn may_initiate(actor: &Actor, booking: &BookingFacts) -> Result<(), DomainError> {
        if actor.role != Role::Patient || actor.user_id != booking.patient_id {
            return Err(Permission::OnlyThePatientMayPay.into());
        }
        if booking.cancelled {
            return Err(DomainError::BookingCancelled);
        }
        if booking.paid {
            return Err(DomainError::BookingAlreadyPaid);
        }
        if booking.active_payment.is_some() {
            return Err(DomainError::PaymentInProgress);
        }
        Ok(())
    }

    /// Decides on the first command a payment can receive; anything else
    /// targets a payment that does not exist yet.
    fn initiate(command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        let PaymentCommand::Initiate {
            actor,
            payment_id,
            booking,
            method,
            charge,
            at,
        } = command
        else {
            return Err(DomainError::PaymentNotFound);
        };
        Self::may_initiate(&actor, &booking)?;
        provider_reference("provider_payment_id", &charge.provider_payment_id)?;
        provider_reference("confirmation_url", &charge.confirmation_url)?;
        Ok(vec![PaymentEvent::PaymentInitiated {
            payment_id,
            booking_id: booking.booking_id,
            patient_id: booking.patient_id,
            method,
            amount: booking.price,
            initiated_at: at,
            provider_payment_id: Some(charge.provider_payment_id),
            confirmation_url: Some(charge.confirmation_url),
        }])
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "Payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
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
        if let PaymentEvent::PaymentInitiated {
            booking_id,
            patient_id,
            amount,
            provider_payment_id,
            ..
        } = event
        {
            self.state = Some(Initiated {
                booking_id,
                patient_id,
                amount,
                status: PaymentStatus::Pending,
                provider_payment_id,
            });
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        match event {
            PaymentEvent::PaymentInitiated { .. } => {}
            PaymentEvent::PaymentSucceeded {
                provider_payment_id,
                ..
            } => {
                state.status = PaymentStatus::Succeeded;
                state.provider_payment_id = Some(provider_payment_id);
            }
            PaymentEvent::PaymentFailed {
                provider_payment_id,
                ..
            } => {
                state.status = PaymentStatus::Failed;
                state.provider_payment_id = Some(provider_payment_id);
            }
            PaymentEvent::RefundRequested { .. } => state.status = PaymentStatus::RefundPending,
            PaymentEvent::PaymentRefunded { .. } => state.status = PaymentStatus::Refunded,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::values::Currency;
    use cqrs_es::test::TestFramework;

    type Given = Vec<PaymentEvent>;

    const PATIENT: u128 = 1;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn patient() -> Actor {
        Actor::new(id(PATIENT), Role::Patient)
    }

    fn admin() -> Actor {
        Actor::new(id(100), Role::Admin)
    }

    fn rub(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::rub()).unwrap()
    }

    fn booking() -> BookingFacts {
        BookingFacts {
            booking_id: id(500),
            patient_id: id(PATIENT),
            price: rub(150_000),
            cancelled: false,
            paid: false,
            active_payment: None,
        }
    }

    fn charge() -> ProviderCharge {
        ProviderCharge {
            provider_payment_id: "pay-0".to_owned(),
            confirmation_url: "https://pay.example/pay-0".to_owned(),
        }
    }

    fn reason() -> Reason {
        Reason::parse("visit did not happen").unwrap()
    }

    fn initiate_as(actor: Actor, booking: BookingFacts) -> PaymentCommand {
        PaymentCommand::Initiate {
            actor,
            payment_id: id(700),
            booking,
            method: PaymentMethod::Card,
            charge: charge(),
            at: at(),
        }
    }

    fn pending() -> Given {
        vec![PaymentEvent::PaymentInitiated {
            payment_id: id(700),
            booking_id: id(500),
            patient_id: id(PATIENT),
            method: PaymentMethod::Card,
            amount: rub(150_000),
            initiated_at: at(),
            provider_payment_id: Some("pay-0".to_owned()),
            confirmation_url: Some("https://pay.example/pay-0".to_owned()),
        }]
    }

    fn then(mut given: Given, event: PaymentEvent) -> Given {
        given.push(event);
        given
    }

    fn succeeded_event() -> PaymentEvent {
        PaymentEvent::PaymentSucceeded {
            provider_payment_id: "pay-0".to_owned(),
            at: at(),
        }
    }

    fn failed_event() -> PaymentEvent {
        PaymentEvent::PaymentFailed {
            provider_payment_id: "pay-0".to_owned(),
            at: at(),
        }
    }

    fn refund_requested_event() -> PaymentEvent {
        PaymentEvent::RefundRequested {
            reason: reason(),
            requested_by: admin().user_id,
            at: at(),
        }
    }

    fn refunded_event() -> PaymentEvent {
        PaymentEvent::PaymentRefunded {
            provider_refund_id: "ref-1".to_owned(),
            at: at(),
        }
    }

    fn succeeded() -> Given {
        then(pending(), succeeded_event())
    }

    fn failed() -> Given {
        then(pending(), failed_event())
    }

    fn refund_pending() -> Given {
        then(succeeded(), refund_requested_event())
    }

    fn refunded() -> Given {
        then(refund_pending(), refunded_event())
    }

    fn mark_succeeded(amount: Money) -> PaymentCommand {
        PaymentCommand::MarkSucceeded {
            provider_payment_id: "pay-0".to_owned(),
            amount,
            at: at(),
        }
    }

    fn mark_failed() -> PaymentCommand {
        PaymentCommand::MarkFailed {
            provider_payment_id: "pay-0".to_owned(),
            at: at(),
        }
    }

    fn request_refund(actor: Actor) -> PaymentCommand {
        PaymentCommand::RequestRefund {
            actor,
            reason: reason(),
            at: at(),
        }
    }

    fn mark_refunded() -> PaymentCommand {
        PaymentCommand::MarkRefunded {
            provider_refund_id: "ref-1".to_owned(),
            provider_payment_id: "pay-0".to_owned(),
            amount: rub(150_000),
            at: at(),
        }
    }

    async fn expect(given: Given, command: PaymentCommand, events: Vec<PaymentEvent>) {
        TestFramework::<Payment>::with(())
            .given(given)
            .when_async(command)
            .await
            .then_expect_events(events);
    }

    async fn reject(given: Given, command: PaymentCommand, error: DomainError) {
        TestFramework::<Payment>::with(())
            .given(given)
            .when_async(command)
            .await
            .then_expect_error(error);
    }

    fn transition(from: PaymentStatus, action: PaymentAction) -> DomainError {
        DomainError::PaymentTransition { from, action }
    }

    // --- Initiate ---

    #[tokio::test]
    async fn the_patient_can_pay_the_booking_price() {
        expect(vec![], initiate_as(patient(), booking()), pending()).await;
    }

    #[tokio::test]
    async fn a_payment_cannot_be_initiated_twice() {
        let command = initiate_as(patient(), booking());
        reject(pending(), command, DomainError::PaymentAlreadyExists).await;
    }

    #[tokio::test]
    async fn nobody_but_the_bookings_patient_can_pay() {
        let error = DomainError::Forbidden(Permission::OnlyThePatientMayPay);
        for actor in [
            Actor::new(id(2), Role::Patient),
            Actor::new(id(PATIENT), Role::Admin),
            admin(),
            Actor::system(),
        ] {
            reject(vec![], initiate_as(actor, booking()), error.clone()).await;
        }
    }

    #[tokio::test]
    async fn a_cancelled_booking_cannot_be_paid() {
        let facts = BookingFacts {
            cancelled: true,
            ..booking()
        };
        let command = initiate_as(patient(), facts);
        reject(vec![], command, DomainError::BookingCancelled).await;
    }

    #[tokio::test]
    async fn a_paid_booking_cannot_be_paid_again() {
        let facts = BookingFacts {
            paid: true,
            ..booking()
        };
        let command = initiate_as(patient(), facts);
        reject(vec![], command, DomainError::BookingAlreadyPaid).await;
    }

    #[tokio::test]
    async fn a_booking_with_a_payment_in_progress_cannot_be_paid_again() {
        let facts = BookingFacts {
            active_payment: Some(id(699)),
            ..booking()
        };
        let command = initiate_as(patient(), facts);
        reject(vec![], command, DomainError::PaymentInProgress).await;
    }

    #[tokio::test]
    async fn a_charge_without_a_provider_reference_or_page_is_invalid() {
        for (charge, field) in [
            (
                ProviderCharge {
                    provider_payment_id: " ".to_owned(),
                    ..charge()
                },
                "provider_payment_id",
            ),
            (
                ProviderCharge {
                    confirmation_url: String::new(),
                    ..charge()
                },
                "confirmation_url",
            ),
        ] {
            let command = PaymentCommand::Initiate {
                actor: patient(),
                payment_id: id(700),
                booking: booking(),
                method: PaymentMethod::Card,
                charge,
                at: at(),
            };
            let error = ValidationError::new(field, "must not be empty").into();
            reject(vec![], command, error).await;
        }
    }

    #[test]
    fn a_payment_recorded_before_provider_references_still_loads() {
        let json = serde_json::json!({ "PaymentInitiated": {
            "payment_id": id(700), "booking_id": id(500), "patient_id": id(PATIENT),
            "method": "card", "amount": { "amount_minor": 150_000, "currency": "RUB" },
            "initiated_at": at(),
        }});
        let event: PaymentEvent = serde_json::from_value(json).unwrap();
        let mut payment = Payment::default();
        payment.apply(event);
        assert_eq!(payment.provider_payment_id(), None);
        assert_eq!(payment.status(), Some(PaymentStatus::Pending));
    }

    #[tokio::test]
    async fn commands_on_a_missing_payment_are_not_found() {
        for command in [
            mark_succeeded(rub(150_000)),
            mark_failed(),
            request_refund(admin()),
            mark_refunded(),
        ] {
            reject(vec![], command, DomainError::PaymentNotFound).await;
        }
    }

    // --- MarkSucceeded ---

    #[tokio::test]
    async fn a_pending_payment_succeeds_when_the_amount_matches() {
        let command = mark_succeeded(rub(150_000));
        expect(pending(), command, vec![succeeded_event()]).await;
    }

    #[tokio::test]
    async fn a_different_amount_is_rejected_as_invalid() {
        let error = DomainError::AmountMismatch {
            expected: rub(150_000),
            received: rub(149_999),
        };
        assert_eq!(error.kind(), crate::ErrorKind::Invalid);
        reject(pending(), mark_succeeded(rub(149_999)), error).await;

        let dollars = Money::new(150_000, Currency::parse("USD").unwrap()).unwrap();
        let error = DomainError::AmountMismatch {
            expected: rub(150_000),
            received: dollars.clone(),
        };
        reject(pending(), mark_succeeded(dollars), error).await;
    }

    #[tokio::test]
    async fn a_repeated_success_notification_changes_nothing() {
        for given in [succeeded(), refund_pending(), refunded()] {
            expect(given, mark_succeeded(rub(150_000)), vec![]).await;
        }
    }

    #[tokio::test]
    async fn a_failed_payment_cannot_succeed() {
        let error = transition(PaymentStatus::Failed, PaymentAction::Succeed);
        reject(failed(), mark_succeeded(rub(150_000)), error).await;
    }

    #[tokio::test]
    async fn an_empty_provider_reference_is_invalid() {
        let command = PaymentCommand::MarkSucceeded {
            provider_payment_id: " ".to_owned(),
            amount: rub(150_000),
            at: at(),
        };
        let error = ValidationError::new("provider_payment_id", "must not be empty").into();
        reject(pending(), command, error).await;
        let command = PaymentCommand::MarkRefunded {
            provider_refund_id: String::new(),
            provider_payment_id: "pay-0".to_owned(),
            amount: rub(150_000),
            at: at(),
        };
        let error = ValidationError::new("provider_refund_id", "must not be empty").into();
        reject(refund_pending(), command, error).await;
    }

    #[tokio::test]
    async fn a_notification_about_another_charge_settles_nothing() {
        let other = |command: PaymentCommand| match command {
            PaymentCommand::MarkSucceeded { amount, at, .. } => PaymentCommand::MarkSucceeded {
                provider_payment_id: "someone-elses-charge".to_owned(),
                amount,
                at,
            },
            PaymentCommand::MarkFailed { at, .. } => PaymentCommand::MarkFailed {
                provider_payment_id: "someone-elses-charge".to_owned(),
                at,
            },
            PaymentCommand::MarkRefunded {
                provider_refund_id,
                amount,
                at,
                ..
            } => PaymentCommand::MarkRefunded {
                provider_refund_id,
                provider_payment_id: "someone-elses-charge".to_owned(),
                amount,
                at,
            },
            command => command,
        };
        let error = DomainError::UnknownProviderCharge;
        for given in [pending(), succeeded(), failed()] {
            reject(
                given.clone(),
                other(mark_succeeded(rub(150_000))),
                error.clone(),
            )
            .await;
            reject(given, other(mark_failed()), error.clone()).await;
        }
        for given in [refund_pending(), refunded()] {
            reject(given, other(mark_refunded()), error.clone()).await;
        }
    }

    #[tokio::test]
    async fn a_payment_that_opened_no_charge_accepts_no_notification() {
        let mut legacy = pending();
        if let Some(PaymentEvent::PaymentInitiated {
            provider_payment_id,
            ..
        }) = legacy.first_mut()
        {
            *provider_payment_id = None;
        }
        let error = DomainError::UnknownProviderCharge;
        reject(legacy.clone(), mark_succeeded(rub(150_000)), error.clone()).await;
        reject(legacy, mark_failed(), error).await;
    }

    // --- MarkFailed ---

    #[tokio::test]
    async fn a_pending_payment_can_fail() {
        expect(pending(), mark_failed(), vec![failed_event()]).await;
    }

    #[tokio::test]
    async fn a_late_failure_notification_changes_nothing() {
        for given in [failed(), succeeded(), refund_pending(), refunded()] {
            expect(given, mark_failed(), vec![]).await;
        }
    }

    // --- RequestRefund ---

    #[tokio::test]
    async fn an_admin_can_request_a_refund_of_a_successful_payment() {
        let command = request_refund(admin());
        expect(succeeded(), command, vec![refund_requested_event()]).await;
        let by_system = PaymentEvent::RefundRequested {
            reason: reason(),
            requested_by: Uuid::nil(),
            at: at(),
        };
        expect(
            succeeded(),
            request_refund(Actor::system()),
            vec![by_system],
        )
        .await;
    }

    #[tokio::test]
    async fn a_patient_cannot_request_a_refund() {
        let error = DomainError::Forbidden(Permission::OnlyAdminsMayRefund);
        reject(succeeded(), request_refund(patient()), error).await;
    }

    #[tokio::test]
    async fn only_a_successful_payment_can_be_refunded() {
        for (given, from) in [
            (pending(), PaymentStatus::Pending),
            (failed(), PaymentStatus::Failed),
            (refund_pending(), PaymentStatus::RefundPending),
            (refunded(), PaymentStatus::Refunded),
        ] {
            let error = transition(from, PaymentAction::RequestRefund);
            reject(given, request_refund(admin()), error).await;
        }
    }

    // --- MarkRefunded ---

    #[tokio::test]
    async fn a_pending_refund_completes() {
        expect(refund_pending(), mark_refunded(), vec![refunded_event()]).await;
    }

    #[tokio::test]
    async fn a_refund_of_another_amount_is_rejected_as_invalid() {
        let command = PaymentCommand::MarkRefunded {
            provider_refund_id: "ref-1".to_owned(),
            provider_payment_id: "pay-0".to_owned(),
            amount: rub(1),
            at: at(),
        };
        let error = DomainError::AmountMismatch {
            expected: rub(150_000),
            received: rub(1),
        };
        reject(refund_pending(), command, error).await;
    }

    #[tokio::test]
    async fn a_repeated_refund_notification_changes_nothing() {
        expect(refunded(), mark_refunded(), vec![]).await;
    }

    #[tokio::test]
    async fn a_refund_cannot_complete_without_being_requested() {
        for (given, from) in [
            (pending(), PaymentStatus::Pending),
            (succeeded(), PaymentStatus::Succeeded),
            (failed(), PaymentStatus::Failed),
        ] {
            let error = transition(from, PaymentAction::CompleteRefund);
            reject(given, mark_refunded(), error).await;
        }
    }

    // --- State ---

    #[test]
    fn state_follows_the_lifecycle() {
        let mut payment = Payment::default();
        assert!(!payment.exists());
        assert_eq!(payment.provider_payment_id(), None);
        for event in refund_pending() {
            payment.apply(event);
        }
        assert!(payment.exists());
        assert_eq!(payment.booking_id(), Some(id(500)));
        assert_eq!(payment.patient_id(), Some(id(PATIENT)));
        assert_eq!(payment.status(), Some(PaymentStatus::RefundPending));
        assert_eq!(payment.amount(), Some(&rub(150_000)));
        assert_eq!(payment.provider_payment_id(), Some("pay-0"));
    }

    #[test]
    fn stored_events_are_revalidated_on_load() {
        let event = refund_requested_event();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            serde_json::from_value::<PaymentEvent>(json.clone()).unwrap(),
            event
        );
        let mut tampered = json;
        tampered["RefundRequested"]["reason"] = serde_json::json!("");
        assert!(serde_json::from_value::<PaymentEvent>(tampered).is_err());
    }

    #[test]
    fn statuses_serialize_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&PaymentStatus::RefundPending).unwrap(),
            "\"refund_pending\""
        );
        assert_eq!(PaymentStatus::RefundPending.as_str(), "refund_pending");
        assert_eq!(succeeded_event().event_type(), "PaymentSucceeded");
        assert_eq!(succeeded_event().event_version(), "1");
    }
}
