//! Who may see a log entry on the SSE stream: the same rules as the reads.
//! Chats: their members. Bookings: admins, the booking's patient, the doctor
//! assigned to it. Payments: admins and the paying patient.
//!
//! The parties of an aggregate are taken from its own events in the event
//! store, the write side's truth, as of the entry shown, rather than from a
//! read model that may not have applied that entry yet. They are kept per
//! stream and moved forward by the entries themselves.

use std::collections::{HashMap, HashSet};

use domain::values::{Actor, Role};
use herald_nats::LogEntry;
use sqlx::PgPool;
use uuid::Uuid;

/// Aggregates whose parties one stream remembers before starting afresh, so a
/// long-lived stream's memory stays bounded.
const REMEMBERED: usize = 4096;

/// The event types that change who may see an aggregate.
const PARTY_EVENTS: [&str; 6] = [
    "ChatCreated",
    "MemberAdded",
    "MemberRemoved",
    "BookingRequested",
    "DoctorAssigned",
    "PaymentInitiated",
];

/// The people involved in one aggregate.
#[derive(Debug, Default)]
struct Parties {
    members: HashSet<Uuid>,
    patient: Option<Uuid>,
    doctor: Option<Uuid>,
}

impl Parties {
    /// Moves the parties past one event of their aggregate.
    fn observe(&mut self, event_type: &str, payload: &serde_json::Value) {
        let fields = payload.get(event_type).unwrap_or(payload);
        let uuid = |name: &str| {
            fields
                .get(name)
                .and_then(|value| value.as_str())
                .and_then(|value| value.parse::<Uuid>().ok())
        };
        match event_type {
            "ChatCreated" => {
                self.members = fields
                    .get("members")
                    .and_then(|members| members.as_array())
                    .map(|members| {
                        members
                            .iter()
                            .filter_map(|m| m.as_str()?.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "MemberAdded" => self.members.extend(uuid("user_id")),
            "MemberRemoved" => {
                if let Some(user) = uuid("user_id") {
                    self.members.remove(&user);
                }
            }
            "BookingRequested" | "PaymentInitiated" => self.patient = uuid("patient_id"),
            "DoctorAssigned" => self.doctor = uuid("doctor_id"),
            _ => {}
        }
    }

    fn show_to(&self, aggregate_type: &str, actor: Actor) -> bool {
        let me = Some(actor.user_id);
        match aggregate_type {
            "Chat" => self.members.contains(&actor.user_id),
            "Booking" => match actor.role {
                Role::Admin | Role::System => true,
                Role::Patient => self.patient == me,
                Role::Doctor => self.doctor == me,
                Role::Auditor => false,
            },
            "Payment" => actor.is_admin() || (actor.role == Role::Patient && self.patient == me),
            _ => actor.is_admin(),
        }
    }
}

/// One stream's view of who may see what.
pub struct Audience {
    actor: Actor,
    known: HashMap<(String, String), Parties>,
}

impl Audience {
    /// The audience rules applied for `actor`.
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            known: HashMap::new(),
        }
    }

    /// Whether the caller may see `entry`. Entries must come in log order.
    /// Someone an entry adds or removes sees that entry, so a new member
    /// learns they joined and a removed one that they left.
    pub async fn sees(&mut self, pool: &PgPool, entry: &LogEntry) -> Result<bool, sqlx::Error> {
        let key = (entry.aggregate_type.clone(), entry.aggregate_id.clone());
        if !self.known.contains_key(&key) {
            if self.known.len() >= REMEMBERED {
                self.known.clear();
            }
            let parties = load(pool, entry).await?;
            self.known.insert(key.clone(), parties);
        }
        let Some(parties) = self.known.get_mut(&key) else {
            return Ok(false);
        };
        let before = parties.show_to(&entry.aggregate_type, self.actor);
        parties.observe(&entry.event_type, &entry.payload);
        Ok(before || parties.show_to(&entry.aggregate_type, self.actor))
    }
}

/// The parties of `entry`'s aggregate just before `entry`, from its events in
/// the event store.
async fn load(pool: &PgPool, entry: &LogEntry) -> Result<Parties, sqlx::Error> {
    let types: Vec<&str> = PARTY_EVENTS.to_vec();
    let events: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence < $3
            AND event_type = ANY($4)
          ORDER BY sequence",
    )
    .bind(&entry.aggregate_type)
    .bind(&entry.aggregate_id)
    .bind(entry.sequence)
    .bind(&types)
    .fetch_all(pool)
    .await?;
    let mut parties = Parties::default();
    for (event_type, payload) in &events {
        parties.observe(event_type, payload);
    }
    Ok(parties)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_doctor_sees_a_booking_only_once_assigned_to_it() {
        let (patient, doctor) = (Uuid::new_v4(), Uuid::new_v4());
        let mut parties = Parties::default();
        parties.observe(
            "BookingRequested",
            &json!({ "BookingRequested": { "patient_id": patient } }),
        );
        let as_doctor = Actor::new(doctor, Role::Doctor);
        assert!(parties.show_to("Booking", Actor::new(patient, Role::Patient)));
        assert!(!parties.show_to("Booking", as_doctor));
        parties.observe(
            "DoctorAssigned",
            &json!({ "DoctorAssigned": { "doctor_id": doctor } }),
        );
        assert!(parties.show_to("Booking", as_doctor));
        assert!(!parties.show_to("Payment", as_doctor));
    }

    #[test]
    fn a_removed_member_no_longer_sees_the_chat() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut parties = Parties::default();
        parties.observe(
            "ChatCreated",
            &json!({ "ChatCreated": { "members": [a, b] } }),
        );
        let b_actor = Actor::new(b, Role::Patient);
        assert!(parties.show_to("Chat", b_actor));
        parties.observe(
            "MemberRemoved",
            &json!({ "MemberRemoved": { "user_id": b } }),
        );
        assert!(!parties.show_to("Chat", b_actor));
    }
}
