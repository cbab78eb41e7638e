use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Longest idempotency key Herald accepts or sends: an `Idempotency-Key`, a
/// live frame's `client_id`, a payment provider's `Idempotence-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// Whether `key` is 1 to [`MAX_KEY_LEN`] bytes long.
pub fn is_valid_key_length(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len())
}

/// A caller's `Idempotency-Key` together with a fingerprint of the request it
/// came with, so that a reused key with another request can be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key exactly as the caller sent it.
    pub key: String,
    /// The fingerprint of the request, see [`request_hash`].
    pub request_hash: String,
}

/// Fingerprints a request: the same method, path and body give the same hash.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// What an earlier command with the same key committed.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Recorded {
    pub request_hash: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub first_sequence: i64,
    pub last_sequence: i64,
}

/// Looks up the command a caller's key already produced, if any.
pub(crate) async fn find(
    pool: &PgPool,
    actor: Uuid,
    key: &str,
) -> Result<Option<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_hash, aggregate_type, aggregate_id, first_sequence, last_sequence
           FROM idempotency_keys
          WHERE actor = $1 AND key = $2",
    )
    .bind(actor)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// The events an earlier command committed, read back from the log to rebuild its answer.
pub(crate) async fn recorded_events<E: DeserializeOwned>(
    pool: &PgPool,
    recorded: &Recorded,
) -> Result<Vec<E>, crate::CommandError> {
    let stored: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, event_version, payload FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence BETWEEN $3 AND $4
          ORDER BY sequence",
    )
    .bind(&recorded.aggregate_type)
    .bind(&recorded.aggregate_id)
    .bind(recorded.first_sequence)
    .bind(recorded.last_sequence)
    .fetch_all(pool)
    .await?;
    stored
        .into_iter()
        .map(|(event_type, event_version, payload)| {
            domain::upcast::decode(&event_type, &event_version, payload)
                .map_err(|err| crate::CommandError::Internal(err.into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_hashes_the_same_and_another_body_differently() {
        let first = request_hash("POST", "/api/v1/chats", b"{\"kind\":\"group\"}");
        assert_eq!(
            first,
            request_hash("POST", "/api/v1/chats", b"{\"kind\":\"group\"}")
        );
        assert_ne!(
            first,
            request_hash("POST", "/api/v1/chats", b"{\"kind\":\"direct\"}")
        );
        assert_ne!(
            first,
            request_hash("POST", "/api/v1/bookings", b"{\"kind\":\"group\"}")
        );
    }
}
