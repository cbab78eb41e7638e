//! The dashboard totals rebuilt from a whole log at once: each booking's and
//! payment's status kept in memory, the totals moved by the same transitions
//! as the live path's, and everything written at the end.

use std::collections::HashMap;

use domain::booking::{BookingEvent, BookingStatus};
use domain::payment::{PaymentEvent, PaymentStatus};
use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Totals, BOOKINGS, PAYMENTS};
use crate::{decode_stored, rebuild, ApplyError, BOOKING, PAYMENT};

/// The statuses and totals of the log read so far.
#[derive(Default)]
pub(crate) struct Fold {
    /// `rm_summary_bookings`.
    bookings: HashMap<Uuid, BookingStatus>,
    /// `rm_summary_payments`: status, amount and currency.
    payments: HashMap<Uuid, (PaymentStatus, i64, String)>,
    totals: Totals,
}

impl rebuild::Fold for Fold {
    fn entry(&mut self, entry: &Stored<'_>, id: Uuid, _: &mut Rows) -> Result<(), ApplyError> {
        match entry.aggregate_type {
            BOOKING => self.booking(entry, id, decode_stored(entry)?),
            PAYMENT => self.payment(entry, id, decode_stored(entry)?),
            _ => Ok(()),
        }
    }

    async fn finish(self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        let mut bookings = Rows::new();
        for (booking_id, status) in &self.bookings {
            bookings
                .row(2)
                .uuid(booking_id.as_bytes())
                .text(Some(status.as_str()));
        }
        bookings
            .copy_into(
                conn,
                "COPY rm_summary_bookings (booking_id, status) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut payments = Rows::new();
        for (payment_id, (status, amount_minor, currency)) in &self.payments {
            payments
                .row(4)
                .uuid(payment_id.as_bytes())
                .text(Some(status.as_str()))
                .int8(*amount_minor)
                .text(Some(currency));
        }
        payments
            .copy_into(
                conn,
                "COPY rm_summary_payments (payment_id, status, amount_minor, currency)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        // The totals of the whole log: every count ever moved, and the money
        // of every currency ever paid or refunded in.
        let mut counts = Rows::new();
        for ((kind, status), count) in &self.totals.counts {
            counts
                .row(3)
                .text(Some(kind))
                .text(Some(status))
                .int8(*count);
        }
        counts
            .copy_into(
                conn,
                "COPY rm_summary_counts (kind, status, count) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut revenue = Rows::new();
        for (currency, (succeeded_minor, refunded_minor)) in &self.totals.revenue {
            revenue
                .row(3)
                .text(Some(currency))
                .int8(*succeeded_minor)
                .int8(*refunded_minor);
        }
        revenue
            .copy_into(
                conn,
                "COPY rm_summary_revenue (currency, succeeded_minor, refunded_minor)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        Ok(())
    }
}

impl Fold {
    fn booking(
        &mut self,
        entry: &Stored<'_>,
        booking_id: Uuid,
        event: BookingEvent,
    ) -> Result<(), ApplyError> {
        let status = match event {
            BookingEvent::BookingRequested { .. } => {
                if self
                    .bookings
                    .insert(booking_id, BookingStatus::Pending)
                    .is_some()
                {
                    return Err(ApplyError::Duplicate {
                        position: entry.position,
                        row: format!("the status of booking {booking_id}"),
                    });
                }
                self.totals
                    .count_in(BOOKINGS, BookingStatus::Pending.as_str());
                return Ok(());
            }
            BookingEvent::DoctorAssigned { .. } => BookingStatus::Assigned,
            BookingEvent::BookingCompleted { .. } => BookingStatus::Completed,
            BookingEvent::BookingCancelled { .. } => BookingStatus::Cancelled,
            // Being paid is a flag beside the status, not a status.
            BookingEvent::BookingPaid { .. } => return Ok(()),
        };
        if let Some(current) = self
            .bookings
            .get_mut(&booking_id)
            .filter(|current| **current != status)
        {
            self.totals.count_out(BOOKINGS, current.as_str());
            self.totals.count_in(BOOKINGS, status.as_str());
            *current = status;
        }
        Ok(())
    }

    fn payment(
        &mut self,
        entry: &Stored<'_>,
        payment_id: Uuid,
        event: PaymentEvent,
    ) -> Result<(), ApplyError> {
        let status = match event {
            PaymentEvent::PaymentInitiated { amount, .. } => {
                let pending = PaymentStatus::Pending;
                let row = (
                    pending,
                    amount.amount_minor(),
                    amount.currency().as_str().to_owned(),
                );
                if self.payments.insert(payment_id, row).is_some() {
                    return Err(ApplyError::Duplicate {
                        position: entry.position,
                        row: format!("the status of payment {payment_id}"),
                    });
                }
                self.totals.count_in(PAYMENTS, pending.as_str());
                return Ok(());
            }
            other => other.status_after(),
        };
        let Some((current, amount_minor, currency)) = self
            .payments
            .get_mut(&payment_id)
            .filter(|(current, ..)| *current != status)
        else {
            return Ok(());
        };
        self.totals.count_out(PAYMENTS, current.as_str());
        self.totals.count_in(PAYMENTS, status.as_str());
        self.totals.move_revenue(status, currency, *amount_minor);
        *current = status;
        Ok(())
    }
}
