//! Facts about one aggregate that a command on another needs, looked up from the
//! event store (never from eventually consistent read models).

use domain::booking::{Booking, BookingStatus};
use domain::payment::BookingFacts;
use domain::DomainError;
use uuid::Uuid;

use crate::{CommandError, WriteSide};

impl WriteSide {
    /// What a payment needs to know about the booking it pays for.
    pub async fn booking_facts(&self, booking_id: Uuid) -> Result<BookingFacts, CommandError> {
        let booking = self.load::<Booking>(booking_id).await?;
        let (Some(patient_id), Some(price)) = (booking.patient_id(), booking.price()) else {
            return Err(DomainError::BookingNotFound.into());
        };
        // Kept by the write side itself, in the transaction of each payment
        // event (migration `one_active_payment`); the commit checks it again.
        let active_payment: Option<Uuid> = sqlx::query_scalar(
            "SELECT payment_id FROM booking_active_payments WHERE booking_id = $1",
        )
        .bind(booking_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(BookingFacts {
            booking_id,
            patient_id,
            price: price.clone(),
            cancelled: booking.status() == Some(BookingStatus::Cancelled),
            paid: booking.is_paid(),
            active_payment,
        })
    }
}
