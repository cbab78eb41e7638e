//! Reading an aggregate back from the log: its latest snapshot, if it has
//! one, and every event after it, applied in order.

use cqrs_es::Aggregate;
use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::CommandError;

/// Aggregate `id` of type `A` as committed, with its version (the sequence of
/// its last event; 0 when it has none). `snapshots` says whether the type
/// keeps snapshots; one that no longer fits the aggregate's shape is passed
/// over, and the aggregate is rebuilt from all its events.
pub(crate) async fn load<A: Aggregate>(
    pool: &PgPool,
    id: Uuid,
    snapshots: bool,
) -> Result<(A, u64), CommandError> {
    let aggregate_id = id.to_string();
    let (mut aggregate, mut version) = match snapshots {
        true => snapshot::<A>(pool, &aggregate_id).await?,
        false => None,
    }
    .unwrap_or_default();
    let mut events = sqlx::query_as::<_, (i64, String, String, String)>(
        "SELECT sequence, event_type, event_version, payload::text FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
          ORDER BY sequence",
    )
    .bind(A::TYPE)
    .bind(&aggregate_id)
    .bind(version as i64)
    .fetch(pool);
    while let Some((sequence, event_type, event_version, payload)) = events.try_next().await? {
        let event = domain::upcast::decode_text(&event_type, &event_version, &payload)
            .map_err(|err| CommandError::Internal(err.into()))?;
        aggregate.apply(event);
        version = sequence as u64;
    }
    Ok((aggregate, version))
}

/// The aggregate's latest snapshot and the version it was taken at.
async fn snapshot<A: Aggregate>(
    pool: &PgPool,
    aggregate_id: &str,
) -> Result<Option<(A, u64)>, CommandError> {
    let aggregate_type = A::TYPE;
    let stored: Option<(i64, String)> = sqlx::query_as(
        "SELECT last_sequence, payload::text FROM snapshots
          WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY last_sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await?;
    Ok(stored.and_then(|(version, payload)| {
        serde_json::from_str(&payload)
            .inspect_err(|err| {
                tracing::warn!(aggregate_type, aggregate_id, %err, "a snapshot no longer fits; loading from the events");
            })
            .ok()
            .map(|aggregate| (aggregate, version as u64))
    }))
}
