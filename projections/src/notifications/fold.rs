//! The notifications read model rebuilt from a whole log at once: the rules
//! run over everything they learn, kept in memory; notifications are
//! streamed in as they are made, and what the rules know is copied in at
//! the end.

use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use sqlx::PgConnection;
use uuid::Uuid;

use super::rules::{At, Knowledge};
use super::{event_of, push_notification, COPY_NOTIFICATIONS};
use crate::{rebuild, ApplyError};

/// What the rules know after the log read so far.
#[derive(Default)]
pub(crate) struct Fold {
    knowledge: Knowledge,
    made: Vec<super::Notification>,
}

impl rebuild::Fold for Fold {
    const STREAMED: Option<&'static str> = Some(COPY_NOTIFICATIONS);

    fn entry(
        &mut self,
        entry: &Stored<'_>,
        aggregate_id: Uuid,
        streamed: &mut Rows,
    ) -> Result<(), ApplyError> {
        let Some(event) = event_of(entry)? else {
            return Ok(());
        };
        let at = At {
            position: entry.position,
            recorded_at: entry.recorded_at,
            aggregate_id,
        };
        self.knowledge.event(at, event, &mut self.made);
        for notification in self.made.drain(..) {
            push_notification(streamed, &notification);
        }
        Ok(())
    }

    async fn finish(self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        let knowledge = self.knowledge;
        let mut rows = Rows::new();
        for (user_id, person) in &knowledge.people {
            let settings = serde_json::to_string(&person.settings).unwrap_or_default();
            rows.row(7)
                .uuid(user_id.as_bytes())
                .text(Some(person.role.as_str()))
                .bool(person.active)
                .int8(person.joined_at)
                .int8(person.read_up_to)
                .jsonb(Some(&settings))
                .bool(person.feeds_new_bookings());
        }
        rows.copy_into(
            conn,
            "COPY rm_notification_people (user_id, role, active, joined_at, read_up_to, settings,
                                          feed_new_bookings)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
        let mut rows = Rows::new();
        for (booking_id, parties) in &knowledge.bookings {
            rows.row(3)
                .uuid(booking_id.as_bytes())
                .uuid(parties.patient_id.as_bytes());
            match parties.doctor_id {
                Some(doctor_id) => rows.uuid(doctor_id.as_bytes()),
                None => rows.null(),
            };
        }
        rows.copy_into(
            conn,
            "COPY rm_notification_bookings (booking_id, patient_id, doctor_id)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
        let mut rows = Rows::new();
        for (payment_id, patient_id) in &knowledge.payments {
            rows.row(2)
                .uuid(payment_id.as_bytes())
                .uuid(patient_id.as_bytes());
        }
        rows.copy_into(
            conn,
            "COPY rm_notification_payments (payment_id, patient_id) FROM STDIN (FORMAT binary)",
        )
        .await?;
        Ok(())
    }
}
