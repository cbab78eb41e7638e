//! Read-your-writes: a read that passes a command's `consistency` token waits
//! until every projection it reads has applied that command.

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use commands::ConsistencyToken;
use herald_nats::log;
use projections::Projection;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::AppState;

/// Longest a read waits for its projections to catch up.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// How often the projections' progress is looked at while waiting.
const POLL: Duration = Duration::from_millis(5);

/// The token a read was given, from `?consistency=` or `X-Consistency`.
#[derive(Debug, Clone, Default)]
pub struct Consistency(Option<ConsistencyToken>);

impl<S> FromRequestParts<S> for Consistency
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let from_query = parts.uri.query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "consistency")
                .map(|(_, value)| value.into_owned())
        });
        let from_header = parts
            .headers
            .get("x-consistency")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let Some(raw) = from_query.or(from_header).filter(|raw| !raw.is_empty()) else {
            return Ok(Self(None));
        };
        ConsistencyToken::decode(&raw)
            .map(|token| Self(Some(token)))
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "consistency is not a token returned by a Herald command".to_owned(),
                )
            })
    }
}

/// Waits until every one of `projections` has applied the command behind the
/// token; answers 503 when that takes longer than [`MAX_WAIT`].
pub async fn wait(
    app: &AppState,
    consistency: &Consistency,
    projections: &[Projection],
) -> Result<(), ApiError> {
    let Some(token) = &consistency.0 else {
        return Ok(());
    };
    if token.version == 0 {
        return Ok(());
    }
    // A token is handed out after its command committed, so one that names
    // no stored event has nothing to wait for. It is not refused either: a
    // read must answer the same whether a token names someone else's
    // aggregate or none at all, so that tokens tell nobody what exists.
    let Ok(version) = i64::try_from(token.version) else {
        return Ok(());
    };
    let pool = app.write.pool();
    let stored: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events
                         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3)",
    )
    .bind(&token.aggregate_type)
    .bind(&token.aggregate_id)
    .bind(version)
    .fetch_one(pool)
    .await?;
    if !stored {
        return Ok(());
    }
    let deadline = Instant::now() + MAX_WAIT;
    let mut position = None;
    loop {
        if position.is_none() {
            position =
                log::position_of(pool, &token.aggregate_type, &token.aggregate_id, version).await?;
        }
        if let Some(position) = position {
            let applied = projections::checkpoints(pool, projections).await?;
            if applied.iter().all(|&checkpoint| checkpoint >= position) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(ApiError::NotYetConsistent);
        }
        tokio::time::sleep(POLL).await;
    }
}
