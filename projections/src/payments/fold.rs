//! The payments read model rebuilt from a whole log at once: every payment
//! kept in memory, moved by the same rules as the live path's statements,
//! and copied in at the end.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::payment::{PaymentEvent, PaymentStatus};
use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use sqlx::PgConnection;
use uuid::Uuid;

use super::provider_ids;
use crate::{decode_stored, rebuild, ApplyError, PAYMENT};

/// The payments of the log read so far.
#[derive(Default)]
pub(crate) struct Fold {
    payments: HashMap<Uuid, Payment>,
}

/// A row of `rm_payments`.
struct Payment {
    booking_id: Uuid,
    patient_id: Uuid,
    method: &'static str,
    amount_minor: i64,
    currency: String,
    status: PaymentStatus,
    provider_payment_id: Option<String>,
    provider_refund_id: Option<String>,
    confirmation_url: Option<String>,
    initiated_at: DateTime<Utc>,
    created_position: i64,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl rebuild::Fold for Fold {
    fn entry(
        &mut self,
        entry: &Stored<'_>,
        payment_id: Uuid,
        _: &mut Rows,
    ) -> Result<(), ApplyError> {
        if entry.aggregate_type != PAYMENT {
            return Ok(());
        }
        let (status, (provider_payment_id, provider_refund_id)) = match decode_stored(entry)? {
            PaymentEvent::PaymentInitiated {
                payment_id,
                booking_id,
                patient_id,
                method,
                amount,
                initiated_at,
                provider_payment_id,
                confirmation_url,
            } => {
                if self.payments.contains_key(&payment_id) {
                    return Err(ApplyError::Duplicate {
                        position: entry.position,
                        row: format!("payment {payment_id}"),
                    });
                }
                self.payments.insert(
                    payment_id,
                    Payment {
                        booking_id,
                        patient_id,
                        method: method.as_str(),
                        amount_minor: amount.amount_minor(),
                        currency: amount.currency().as_str().to_owned(),
                        status: PaymentStatus::Pending,
                        provider_payment_id,
                        provider_refund_id: None,
                        confirmation_url,
                        initiated_at,
                        created_position: entry.position,
                        updated_at: entry.recorded_at,
                        version: entry.position,
                    },
                );
                return Ok(());
            }
            other => (other.status_after(), provider_ids(other)),
        };
        if let Some(payment) = self.payments.get_mut(&payment_id) {
            payment.status = status;
            if provider_payment_id.is_some() {
                payment.provider_payment_id = provider_payment_id;
            }
            if provider_refund_id.is_some() {
                payment.provider_refund_id = provider_refund_id;
            }
            payment.updated_at = entry.recorded_at;
            payment.version = entry.position;
        }
        Ok(())
    }

    async fn finish(self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        let mut rows = Rows::new();
        for (payment_id, p) in &self.payments {
            rows.row(14)
                .uuid(payment_id.as_bytes())
                .uuid(p.booking_id.as_bytes())
                .uuid(p.patient_id.as_bytes())
                .text(Some(p.method))
                .int8(p.amount_minor)
                .text(Some(&p.currency))
                .text(Some(p.status.as_str()))
                .text(p.provider_payment_id.as_deref())
                .text(p.provider_refund_id.as_deref())
                .text(p.confirmation_url.as_deref())
                .timestamptz(Some(p.initiated_at))
                .int8(p.created_position)
                .timestamptz(Some(p.updated_at))
                .int8(p.version);
        }
        rows.copy_into(
            conn,
            "COPY rm_payments (payment_id, booking_id, patient_id, method, amount_minor, currency,
                               status, provider_payment_id, provider_refund_id, confirmation_url,
                               initiated_at, created_position, updated_at, version)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
        Ok(())
    }
}
