//! The bookings read model rebuilt from a whole log at once: every booking
//! and every payment's link to its booking kept in memory, moved by the same
//! rules as the live path's statements, and copied in at the end.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::booking::{BookingEvent, BookingStatus};
use domain::payment::{PaymentEvent, PaymentStatus};
use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{decode_stored, rebuild, ApplyError, BOOKING, PAYMENT};

/// The bookings and payments of the log read so far.
#[derive(Default)]
pub(crate) struct Fold {
    bookings: HashMap<Uuid, Booking>,
    /// `rm_booking_payments`: each payment's booking and status.
    payments: HashMap<Uuid, (Uuid, PaymentStatus)>,
}

/// A row of `rm_bookings`.
struct Booking {
    patient_id: Uuid,
    doctor_id: Option<Uuid>,
    call_type: &'static str,
    address: String,
    amount_minor: i64,
    currency: String,
    scheduled_at: Option<DateTime<Utc>>,
    status: BookingStatus,
    paid: bool,
    payment_id: Option<Uuid>,
    payment_status: Option<PaymentStatus>,
    cancel_reason: Option<String>,
    requested_at: DateTime<Utc>,
    created_position: i64,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl Booking {
    /// Marks the row changed by `entry`.
    fn touch(&mut self, entry: &Stored<'_>) {
        self.updated_at = entry.recorded_at;
        self.version = entry.position;
    }
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
        for (booking_id, b) in &self.bookings {
            bookings
                .row(17)
                .uuid(booking_id.as_bytes())
                .uuid(b.patient_id.as_bytes());
            match &b.doctor_id {
                Some(doctor_id) => bookings.uuid(doctor_id.as_bytes()),
                None => bookings.null(),
            };
            bookings
                .text(Some(b.call_type))
                .text(Some(&b.address))
                .int8(b.amount_minor)
                .text(Some(&b.currency))
                .timestamptz(b.scheduled_at)
                .text(Some(b.status.as_str()))
                .bool(b.paid);
            match &b.payment_id {
                Some(payment_id) => bookings.uuid(payment_id.as_bytes()),
                None => bookings.null(),
            };
            bookings
                .text(b.payment_status.map(PaymentStatus::as_str))
                .text(b.cancel_reason.as_deref())
                .timestamptz(Some(b.requested_at))
                .int8(b.created_position)
                .timestamptz(Some(b.updated_at))
                .int8(b.version);
        }
        bookings
            .copy_into(
                conn,
                "COPY rm_bookings (booking_id, patient_id, doctor_id, call_type, address,
                                   amount_minor, currency, scheduled_at, status, paid, payment_id,
                                   payment_status, cancel_reason, requested_at,
                                   created_position, updated_at, version)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut payments = Rows::new();
        for (payment_id, (booking_id, status)) in &self.payments {
            payments
                .row(3)
                .uuid(payment_id.as_bytes())
                .uuid(booking_id.as_bytes())
                .text(Some(status.as_str()));
        }
        payments
            .copy_into(
                conn,
                "COPY rm_booking_payments (payment_id, booking_id, status)
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
        if let BookingEvent::BookingRequested {
            patient_id,
            call_type,
            address,
            price,
            scheduled_at,
            requested_at,
            ..
        } = event
        {
            if self.bookings.contains_key(&booking_id) {
                return Err(ApplyError::Duplicate {
                    position: entry.position,
                    row: format!("booking {booking_id}"),
                });
            }
            self.bookings.insert(
                booking_id,
                Booking {
                    patient_id,
                    doctor_id: None,
                    call_type: call_type.as_str(),
                    address: address.as_str().to_owned(),
                    amount_minor: price.amount_minor(),
                    currency: price.currency().as_str().to_owned(),
                    scheduled_at,
                    status: BookingStatus::Pending,
                    paid: false,
                    payment_id: None,
                    payment_status: None,
                    cancel_reason: None,
                    requested_at,
                    created_position: entry.position,
                    updated_at: entry.recorded_at,
                    version: entry.position,
                },
            );
            return Ok(());
        }
        let Some(booking) = self.bookings.get_mut(&booking_id) else {
            return Ok(());
        };
        match event {
            BookingEvent::BookingRequested { .. } => {}
            BookingEvent::DoctorAssigned { doctor_id, .. } => {
                booking.status = BookingStatus::Assigned;
                booking.doctor_id = Some(doctor_id);
            }
            BookingEvent::BookingCompleted { doctor_id, .. } => {
                booking.status = BookingStatus::Completed;
                booking.doctor_id = Some(doctor_id);
            }
            BookingEvent::BookingCancelled { reason, .. } => {
                booking.status = BookingStatus::Cancelled;
                booking.cancel_reason = Some(reason.as_str().to_owned());
            }
            BookingEvent::BookingPaid { payment_id, .. } => {
                // As the live path: a payment that paid a booking has succeeded,
                // should its own events be missing.
                booking.paid = true;
                booking.payment_id = Some(payment_id);
                booking.payment_status = Some(
                    self.payments
                        .get(&payment_id)
                        .map_or(PaymentStatus::Succeeded, |(_, status)| *status),
                );
            }
        }
        booking.touch(entry);
        Ok(())
    }

    fn payment(
        &mut self,
        entry: &Stored<'_>,
        payment_id: Uuid,
        event: PaymentEvent,
    ) -> Result<(), ApplyError> {
        let status = match event {
            PaymentEvent::PaymentInitiated {
                payment_id,
                booking_id,
                ..
            } => {
                if self.payments.contains_key(&payment_id) {
                    return Err(ApplyError::Duplicate {
                        position: entry.position,
                        row: format!("the payment {payment_id} of a booking"),
                    });
                }
                self.payments
                    .insert(payment_id, (booking_id, PaymentStatus::Pending));
                // Once paid, the booking keeps showing the payment that paid it.
                if let Some(booking) = self
                    .bookings
                    .get_mut(&booking_id)
                    .filter(|booking| !booking.paid)
                {
                    booking.payment_id = Some(payment_id);
                    booking.payment_status = Some(PaymentStatus::Pending);
                    booking.touch(entry);
                }
                return Ok(());
            }
            other => other.status_after(),
        };
        let Some((booking_id, current)) = self.payments.get_mut(&payment_id) else {
            return Ok(());
        };
        *current = status;
        if let Some(booking) = self
            .bookings
            .get_mut(booking_id)
            .filter(|booking| booking.payment_id == Some(payment_id))
        {
            booking.payment_status = Some(status);
            booking.touch(entry);
        }
        Ok(())
    }
}
