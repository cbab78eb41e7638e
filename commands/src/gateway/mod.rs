//! The payment gateway port: how Herald asks a payment provider to take money
//! and to give it back, and the notifications the provider sends in return.
//!
//! A provider is reached over the network and may be slow, down or wrong, so
//! every implementation is used through [`Resilient`], which bounds each call,
//! retries with backoff and stops calling a provider that keeps failing. The
//! built-in [`SandboxGateway`] plays a real provider locally.

mod resilient;
pub mod sandbox;

use std::fmt;

use domain::payment::ProviderCharge;
use domain::values::{Currency, Money, PaymentMethod, ValidationError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use resilient::{Resilience, Resilient};
pub use sandbox::{SandboxGateway, ShopCredentials};

use crate::error::BoxError;

/// What a gateway call resolves to.
pub type GatewayResult<'a, T> = BoxFuture<'a, Result<T, GatewayError>>;

/// A payment provider, as Herald uses it.
///
/// Both calls carry an idempotence key: a call repeated after a timeout must
/// find what the first one did instead of charging or refunding twice.
pub trait PaymentGateway: Send + Sync {
    /// Opens a charge the patient confirms on the provider's page.
    fn create_payment<'a>(
        &'a self,
        request: &'a ChargeRequest,
    ) -> GatewayResult<'a, ProviderCharge>;

    /// Asks for the whole charge to be returned. The provider confirms the
    /// refund later with a `refund.succeeded` notification.
    fn request_refund<'a>(
        &'a self,
        request: &'a RefundRequest,
    ) -> GatewayResult<'a, ProviderRefund>;
}

/// A charge to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Makes a repeated request answer the charge already opened.
    pub idempotence_key: String,
    /// Herald's payment, echoed back in the provider's notifications.
    pub payment_id: Uuid,
    /// What to charge.
    pub amount: Money,
    /// How the patient pays.
    pub method: PaymentMethod,
    /// Shown to the patient on the provider's page.
    pub description: String,
}

/// A refund to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Makes a repeated request answer the refund already made.
    pub idempotence_key: String,
    /// Herald's payment, echoed back in the provider's notification.
    pub payment_id: Uuid,
    /// The provider's reference for the charge to return.
    pub provider_payment_id: String,
    /// What to return: the whole charge.
    pub amount: Money,
}

/// The provider's answer to a refund request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    /// The provider's reference for the refund.
    pub provider_refund_id: String,
}

/// Why a gateway call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The provider did not answer in time, could not be reached, or answered
    /// with a server error; trying again later may work.
    #[error("the payment provider is unavailable")]
    Unavailable(#[source] BoxError),
    /// The provider failed so often lately that Herald stopped calling it for
    /// a while, so that requests fail fast instead of hanging.
    #[error("the payment provider is unavailable; calls to it are paused")]
    CircuitOpen,
    /// The provider refused the request; repeating it will not help.
    #[error("the payment provider refused the request: {0}")]
    Refused(String),
}

impl GatewayError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::CircuitOpen)
    }
}

/// An amount as providers write it: a decimal string of major units
/// (`"1500.00"`) and a currency. Every currency Herald bills in has two minor
/// digits, so the conversion is exact in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProviderAmount {
    /// Major units with exactly two decimals, e.g. `"1500.00"`.
    #[schema(example = "1500.00")]
    pub value: String,
    /// ISO 4217 code.
    #[schema(example = "RUB")]
    pub currency: String,
}

/// Minor units in one major unit for every currency Herald bills in.
const MINOR_PER_MAJOR: i64 = 100;

impl ProviderAmount {
    /// Writes `money` as a provider would.
    pub fn from_money(money: &Money) -> Self {
        let minor = money.amount_minor();
        Self {
            value: format!("{}.{:02}", minor / MINOR_PER_MAJOR, minor % MINOR_PER_MAJOR),
            currency: money.currency().as_str().to_owned(),
        }
    }

    /// Reads the amount back, refusing anything that is not a plain decimal
    /// with at most two fraction digits: a float or an exponent in money is
    /// a bug on the provider's side, not something to round.
    pub fn to_money(&self) -> Result<Money, ValidationError> {
        let invalid =
            || ValidationError::new("object.amount.value", "must be a decimal like 1500.00");
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit());
        let (whole, fraction) = match self.value.split_once('.') {
            Some((whole, fraction)) if fraction.len() <= 2 && digits(fraction) => (whole, fraction),
            Some(_) => return Err(invalid()),
            None => (self.value.as_str(), ""),
        };
        if !digits(whole) {
            return Err(invalid());
        }
        let whole: i64 = whole.parse().map_err(|_| invalid())?;
        let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
        let currency = Currency::parse(&self.currency)
            .map_err(|err| ValidationError::new("object.amount.currency", err.message))?;
        Money::new(whole * MINOR_PER_MAJOR + fraction, currency)
            .map_err(|err| ValidationError::new("object.amount.value", err.message))
    }
}

/// The notification a provider sends to `/webhooks/payments`, in the shape of
/// common Russian acquirers' webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = PaymentNotification)]
pub struct Notification {
    /// Always `notification`.
    #[serde(rename = "type")]
    #[schema(example = "notification")]
    pub kind: String,
    /// What happened: `payment.succeeded`, `payment.canceled` or
    /// `refund.succeeded`.
    #[schema(example = "payment.succeeded")]
    pub event: String,
    /// The charge or refund it is about.
    pub object: NotificationObject,
}

/// The charge or refund a notification is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = PaymentNotificationObject)]
pub struct NotificationObject {
    /// The provider's reference for the charge (or, for refunds, the refund).
    pub id: String,
    /// The provider's status of it, e.g. `succeeded`.
    pub status: String,
    /// What was charged or refunded.
    pub amount: ProviderAmount,
    /// For refunds, the provider's reference for the charge refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// What Herald attached when opening the charge.
    pub metadata: NotificationMetadata,
}

/// What Herald attaches to a charge so that notifications name its payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = PaymentNotificationMetadata)]
pub struct NotificationMetadata {
    /// Herald's payment id, as text (providers keep metadata as strings).
    #[schema(format = Uuid)]
    pub payment_id: String,
}

/// The notification events Herald follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationEvent {
    /// The money was taken.
    PaymentSucceeded,
    /// The charge was declined or abandoned.
    PaymentCanceled,
    /// The money was returned.
    RefundSucceeded,
}

impl NotificationEvent {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentSucceeded => "payment.succeeded",
            Self::PaymentCanceled => "payment.canceled",
            Self::RefundSucceeded => "refund.succeeded",
        }
    }

    /// The event named `name`, if Herald follows it.
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        [
            Self::PaymentSucceeded,
            Self::PaymentCanceled,
            Self::RefundSucceeded,
        ]
        .into_iter()
        .find(|event| event.as_str() == name)
        .ok_or_else(|| {
            ValidationError::new(
                "event",
                "must be one of payment.succeeded, payment.canceled, refund.succeeded",
            )
        })
    }
}

impl fmt::Display for NotificationEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn amount(value: &str) -> ProviderAmount {
        ProviderAmount {
            value: value.to_owned(),
            currency: "RUB".to_owned(),
        }
    }

    #[test]
    fn amounts_are_written_with_two_decimals_and_read_back_exactly() {
        for minor in [1, 99, 100, 150_000, 123_456] {
            let money = Money::new(minor, Currency::rub()).unwrap();
            let written = ProviderAmount::from_money(&money);
            assert_eq!(written.to_money().unwrap(), money);
        }
        let money = Money::new(150_000, Currency::rub()).unwrap();
        assert_eq!(ProviderAmount::from_money(&money).value, "1500.00");
        assert_eq!(amount("1500").to_money().unwrap(), money);
        assert_eq!(amount("1500.5").to_money().unwrap().amount_minor(), 150_050);
    }

    #[test]
    fn amounts_that_are_not_plain_decimals_are_refused() {
        for bad in [
            "", "1e3", "-1.00", "1.001", "1,00", ".50", "1.", " 1.00", "0.00",
        ] {
            assert_eq!(
                amount(bad).to_money().unwrap_err().field,
                "object.amount.value",
                "{bad}"
            );
        }
        let lowercase = ProviderAmount {
            currency: "rub".to_owned(),
            ..amount("1.00")
        };
        assert_eq!(
            lowercase.to_money().unwrap_err().field,
            "object.amount.currency"
        );
    }

    #[test]
    fn only_the_followed_notification_events_are_recognised() {
        for event in [
            NotificationEvent::PaymentSucceeded,
            NotificationEvent::PaymentCanceled,
            NotificationEvent::RefundSucceeded,
        ] {
            assert_eq!(NotificationEvent::parse(event.as_str()).unwrap(), event);
        }
        assert_eq!(
            NotificationEvent::parse("payment.waiting_for_capture")
                .unwrap_err()
                .field,
            "event"
        );
    }
}
