use std::collections::HashMap;

use domain::values::Actor;
use herald_nats::trace;

use crate::IdempotencyKey;

/// What every event records about the command that produced it.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Who issued the command.
    pub actor: Actor,
    /// Ties together everything one request set in motion (the `X-Request-Id`).
    pub correlation_id: String,
    /// The request or event that directly caused this command.
    pub causation_id: String,
    /// Present when the caller sent an `Idempotency-Key`.
    pub idempotency: Option<IdempotencyKey>,
}

impl Metadata {
    /// Metadata of a command a client sent over HTTP: the request is both the
    /// correlation and the cause.
    pub fn for_request(actor: Actor, request_id: impl Into<String>) -> Self {
        let request_id = request_id.into();
        Self {
            actor,
            causation_id: request_id.clone(),
            correlation_id: request_id,
            idempotency: None,
        }
    }

    /// Metadata of a command Herald issues on its own, for `cause`: a
    /// timer's or a sweep's, which is both the correlation and the cause.
    /// It needs no idempotency key: the aggregate decides from what it
    /// knows, so issuing it again changes nothing.
    pub fn of_herald(cause: impl Into<String>) -> Self {
        Self::for_request(Actor::system(), cause)
    }

    /// Adds the caller's idempotency key.
    pub fn with_idempotency(mut self, key: Option<IdempotencyKey>) -> Self {
        self.idempotency = key;
        self
    }

    /// The flat map stored in each event's `metadata` column, with the trace
    /// context of the current span when it is being recorded
    /// ([`herald_nats::trace`]), so the command's trace goes on wherever its
    /// events go.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_owned(), self.actor.user_id.to_string()),
            ("role".to_owned(), self.actor.role.as_str().to_owned()),
            ("correlation_id".to_owned(), self.correlation_id.clone()),
            ("causation_id".to_owned(), self.causation_id.clone()),
        ]);
        if let Some(idempotency) = &self.idempotency {
            map.insert("idempotency_key".to_owned(), idempotency.key.clone());
            map.insert("request_hash".to_owned(), idempotency.request_hash.clone());
        }
        if let Some(traceparent) = trace::current() {
            map.insert(trace::TRACEPARENT.to_owned(), traceparent);
        }
        map
    }
}
