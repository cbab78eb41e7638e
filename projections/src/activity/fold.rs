//! The dashboard's time series rebuilt from a whole log at once: every
//! counter and each payment's amount kept in memory, and everything written
//! at the end.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use domain::chat::ChatEvent;
use domain::payment::PaymentEvent;
use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{minute, Moves, MONEY};
use crate::{decode_stored, rebuild, ApplyError, CHAT, PAYMENT};

/// The counters of the log read so far.
#[derive(Default)]
pub(crate) struct Fold {
    moves: Moves,
    /// `rm_activity_payments`: amount and currency.
    payments: HashMap<Uuid, (i64, String)>,
    /// `rm_activity_revenue`: money taken and returned per currency and minute.
    revenue: BTreeMap<(String, DateTime<Utc>), (i64, i64)>,
}

impl rebuild::Fold for Fold {
    fn entry(&mut self, entry: &Stored<'_>, id: Uuid, _: &mut Rows) -> Result<(), ApplyError> {
        let counted = self.moves.count(entry.event_type, entry.recorded_at);
        match entry.aggregate_type {
            CHAT if counted => {
                decode_stored::<ChatEvent>(entry)?;
                self.moves.message(id, entry.recorded_at);
            }
            PAYMENT if MONEY.contains(&entry.event_type) => {
                let refund = match decode_stored::<PaymentEvent>(entry)? {
                    PaymentEvent::PaymentInitiated { amount, .. } => {
                        let row = (amount.amount_minor(), amount.currency().as_str().to_owned());
                        if self.payments.insert(id, row).is_some() {
                            return Err(ApplyError::Duplicate {
                                position: entry.position,
                                row: format!("the amount of payment {id}"),
                            });
                        }
                        return Ok(());
                    }
                    PaymentEvent::PaymentSucceeded { .. } => false,
                    PaymentEvent::PaymentRefunded { .. } => true,
                    _ => return Ok(()),
                };
                if let Some((amount_minor, currency)) = self.payments.get(&id) {
                    let total = self
                        .revenue
                        .entry((currency.clone(), minute(entry.recorded_at)))
                        .or_default();
                    if refund {
                        total.1 += amount_minor;
                    } else {
                        total.0 += amount_minor;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn finish(self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        let mut counts = Rows::new();
        for ((kind, bucket), count) in &self.moves.counts {
            counts
                .row(3)
                .text(Some(kind))
                .timestamptz(Some(*bucket))
                .int8(*count);
        }
        counts
            .copy_into(
                conn,
                "COPY rm_activity_counts (kind, bucket, count) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut chats = Rows::new();
        for (chat_id, last_message_at) in &self.moves.chats {
            chats
                .row(2)
                .uuid(chat_id.as_bytes())
                .timestamptz(Some(*last_message_at));
        }
        chats
            .copy_into(
                conn,
                "COPY rm_activity_chats (chat_id, last_message_at) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut payments = Rows::new();
        for (payment_id, (amount_minor, currency)) in &self.payments {
            payments
                .row(3)
                .uuid(payment_id.as_bytes())
                .int8(*amount_minor)
                .text(Some(currency));
        }
        payments
            .copy_into(
                conn,
                "COPY rm_activity_payments (payment_id, amount_minor, currency)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut revenue = Rows::new();
        for ((currency, bucket), (succeeded_minor, refunded_minor)) in &self.revenue {
            revenue
                .row(4)
                .text(Some(currency))
                .timestamptz(Some(*bucket))
                .int8(*succeeded_minor)
                .int8(*refunded_minor);
        }
        revenue
            .copy_into(
                conn,
                "COPY rm_activity_revenue (currency, bucket, succeeded_minor, refunded_minor)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        Ok(())
    }
}
