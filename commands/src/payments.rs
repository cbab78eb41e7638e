//! Starting a payment: the one command that asks an outside service first.
//! The booking's facts are looked up and the rules checked before the provider
//! opens a charge, so no charge is opened for a payment that would be refused;
//! the command then records the charge, and its commit checks the rules again.

use chrono::Utc;
use domain::payment::{Payment, PaymentCommand};
use domain::values::{Actor, PaymentMethod};
use uuid::Uuid;

use crate::gateway::{ChargeRequest, GatewayError, PaymentGateway};
use crate::{CommandError, Committed, Metadata, NewId, WriteSide};

/// A patient's request to pay for a booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPayment {
    /// Who pays.
    pub actor: Actor,
    /// The payment's id, chosen by the client or minted for it.
    pub payment_id: NewId,
    /// The booking paid for.
    pub booking_id: Uuid,
    /// How the patient pays.
    pub method: PaymentMethod,
}

/// Why a payment could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartPaymentError {
    /// The command was refused or could not be stored.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The provider did not open the charge.
    #[error(transparent)]
    Provider(#[from] GatewayError),
}

/// Starts a payment through `gateway`. A repeated request (the same
/// idempotency key in `metadata`) is answered from the log, without opening a
/// charge or meeting its own payment as the booking's active one.
pub async fn start_payment(
    write: &WriteSide,
    gateway: &dyn PaymentGateway,
    start: StartPayment,
    metadata: &Metadata,
) -> Result<Committed<Payment>, StartPaymentError> {
    if let Some(recorded) = write.recorded::<Payment>(metadata).await? {
        return Ok(recorded);
    }
    let booking = write.booking_facts(start.booking_id).await?;
    Payment::may_initiate(&start.actor, &booking).map_err(CommandError::Rejected)?;
    let charge = gateway
        .create_payment(&ChargeRequest {
            idempotence_key: format!("payment-{}", start.payment_id.id()),
            payment_id: start.payment_id.id(),
            amount: booking.price.clone(),
            method: start.method,
            description: format!("Herald visit {}", start.booking_id),
        })
        .await?;
    let command = PaymentCommand::Initiate {
        actor: start.actor,
        payment_id: start.payment_id.id(),
        booking,
        method: start.method,
        charge,
        at: Utc::now(),
    };
    Ok(write
        .create::<Payment>(start.payment_id, command, metadata)
        .await?)
}
