//! Facts about one aggregate that a command on another needs, looked up from the
//! event store or from the lookup tables the write side fills in its own
//! transactions (never from eventually consistent read models).

use domain::booking::{Booking, BookingStatus};
use domain::payment::BookingFacts;
use domain::user::Named;
use domain::values::Role;
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

    /// Someone a command names, with their role if their account is active.
    pub async fn person(&self, user_id: Uuid) -> Result<Named, CommandError> {
        let mut named = self.people(&[user_id]).await?;
        Ok(named.remove(0))
    }

    /// The people a command names, in the order given, each with their role
    /// if their account is active. Read from `user_access`, which the User
    /// events fill in their own transaction (migration `user_access`).
    pub async fn people(&self, user_ids: &[Uuid]) -> Result<Vec<Named>, CommandError> {
        let active: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT user_id, role FROM user_access WHERE user_id = ANY($1) AND active",
        )
        .bind(user_ids)
        .fetch_all(self.pool())
        .await?;
        Ok(user_ids
            .iter()
            .map(|&user_id| Named {
                user_id,
                active_as: active
                    .iter()
                    .find(|(id, _)| *id == user_id)
                    .and_then(|(_, role)| role.parse::<Role>().ok()),
            })
            .collect())
    }
}
