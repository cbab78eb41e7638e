//! Making one due delivery in the transaction that holds its outbox row
//! locked: the row is marked sent only after the receiver accepted it, so a
//! worker that dies before leaves it to be made again, and the lock keeps
//! every other worker off it meanwhile.

use std::time::Duration;

use herald_nats::locks::{self, Commit};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Channel, Failure, Outcome};

/// A delivery that is due, as taken from the outbox.
#[derive(Debug, sqlx::FromRow)]
pub struct Due {
    /// The notification.
    pub notification_id: Uuid,
    /// The recipient of an e-mail, the webhook of a webhook.
    pub target: Uuid,
    /// The notification's kind.
    pub kind: String,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// Makes the delivery of `channel` that has been due longest and records how
/// that went, in one transaction; none when nothing is due that no other
/// worker is making.
pub(super) async fn deliver_one<C: Channel>(
    pool: &PgPool,
    channel: &C,
) -> Result<Option<Outcome>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = locks::begin_without_events(&mut conn, Commit::Synced).await?;
    let Some(due): Option<Due> = sqlx::query_as(include_str!("take.sql"))
        .bind(C::NAME)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let outcome = match channel.deliver(&mut tx, &due).await? {
        Ok(()) => mark_sent(&mut tx, C::NAME, &due).await?,
        Err(failure) => record_failure(&mut tx, channel, &due, failure).await?,
    };
    if let Err(err) = tx.commit().await {
        if outcome == Outcome::Sent {
            tracing::error!(
                channel = C::NAME,
                notification_id = %due.notification_id,
                target = %due.target,
                "a delivery the receiver accepted could not be marked sent; it will be made again"
            );
        }
        return Err(err);
    }
    Ok(Some(outcome))
}

/// Marks the delivery of `due` made.
async fn mark_sent(
    conn: &mut PgConnection,
    channel: &str,
    due: &Due,
) -> Result<Outcome, sqlx::Error> {
    sqlx::query(
        "UPDATE notification_deliveries SET attempts = attempts + 1, sent_at = clock_timestamp()
          WHERE notification_id = $1 AND channel = $2 AND target = $3",
    )
    .bind(due.notification_id)
    .bind(channel)
    .bind(due.target)
    .execute(conn)
    .await?;
    Ok(Outcome::Sent)
}

/// Records a failed attempt at the delivery of `due`: it falls due again
/// after the retry's pause, or is set aside when it cannot be made or this
/// was its last attempt.
async fn record_failure<C: Channel>(
    conn: &mut PgConnection,
    channel: &C,
    due: &Due,
    failure: Failure,
) -> Result<Outcome, sqlx::Error> {
    let retry = channel.retry();
    let failures = u32::try_from(due.attempts).unwrap_or(0).saturating_add(1);
    let (error, set_aside) = match failure {
        Failure::Impossible(reason) => (reason, true),
        Failure::Refused(reason) => (reason, failures >= retry.attempts),
    };
    let pause = retry.pause(failures);
    sqlx::query(include_str!("failed.sql"))
        .bind(due.notification_id)
        .bind(C::NAME)
        .bind(due.target)
        .bind(&error)
        .bind(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX))
        .bind(set_aside)
        .execute(conn)
        .await?;
    let outcome = if set_aside {
        Outcome::SetAside
    } else {
        Outcome::Retried
    };
    // The error may quote the receiver, and so an address: it is kept in the
    // outbox only.
    tracing::warn!(
        channel = C::NAME,
        notification_id = %due.notification_id,
        target = %due.target,
        attempts = failures,
        outcome = outcome.as_str(),
        "a delivery of a notification failed; its error is in notification_deliveries.last_error"
    );
    Ok(outcome)
}

/// How long until the next delivery of `channel` not yet due falls due;
/// none when there is none.
pub(super) async fn next_due_in(
    pool: &PgPool,
    channel: &str,
) -> Result<Option<Duration>, sqlx::Error> {
    let millis: Option<i64> = sqlx::query_scalar(
        "SELECT ceil(extract(epoch FROM min(due_at) - now()) * 1000)::bigint
           FROM notification_deliveries
          WHERE channel = $1 AND sent_at IS NULL AND failed_at IS NULL AND due_at > now()",
    )
    .bind(channel)
    .fetch_one(pool)
    .await?;
    Ok(millis.map(|millis| Duration::from_millis(u64::try_from(millis).unwrap_or(0))))
}
