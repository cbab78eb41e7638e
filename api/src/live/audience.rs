//! Who may see a log entry on the SSE stream: the rules of
//! [`domain::access`], the same the reads apply.
//!
//! The parties of an aggregate are taken from its own events in the event
//! store, the write side's truth, as of the entry shown, rather than from a
//! read model that may not have applied that entry yet. They are kept per
//! stream and moved forward by the entries themselves.

use std::collections::HashMap;

use domain::access::{AggregateKind, Parties};
use domain::values::Actor;
use herald_nats::LogEntry;
use sqlx::PgPool;

/// Aggregates whose parties one stream remembers before starting afresh, so a
/// long-lived stream's memory stays bounded.
const REMEMBERED: usize = 4096;

/// The event types that change who may see an aggregate; the others need not
/// be read to know its parties.
const PARTY_EVENTS: [&str; 8] = [
    "ChatCreated",
    "MemberAdded",
    "MemberRemoved",
    "BookingRequested",
    "DoctorAssigned",
    "PaymentInitiated",
    "UserRegistered",
    "UserCreated",
];

/// Why the parties of an entry's aggregate could not be known.
#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    /// The event store could not be read.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// An event is not what its type says.
    #[error(transparent)]
    Event(#[from] domain::access::ObserveError),
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
    /// learns they joined and a removed one that they left. Entries of
    /// aggregates Herald does not know are for admins only.
    pub async fn sees(&mut self, pool: &PgPool, entry: &LogEntry) -> Result<bool, AudienceError> {
        let Some(kind) = AggregateKind::parse(&entry.aggregate_type) else {
            return Ok(self.actor.is_admin());
        };
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
        let before = parties.visible_to(kind, self.actor);
        if PARTY_EVENTS.contains(&entry.event_type.as_str()) {
            parties.observe(
                &entry.aggregate_type,
                &entry.event_type,
                &entry.event_version,
                entry.payload.clone(),
            )?;
        }
        Ok(before || parties.visible_to(kind, self.actor))
    }
}

/// The parties of `entry`'s aggregate just before `entry`, from its events in
/// the event store.
async fn load(pool: &PgPool, entry: &LogEntry) -> Result<Parties, AudienceError> {
    let types: Vec<&str> = PARTY_EVENTS.to_vec();
    let events: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, event_version, payload FROM events
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
    for (event_type, event_version, payload) in events {
        parties.observe(&entry.aggregate_type, &event_type, &event_version, payload)?;
    }
    Ok(parties)
}
