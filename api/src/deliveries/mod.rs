//! Notifications delivered outside Herald, by e-mail ([`crate::email`]) and
//! to webhooks ([`crate::hooks`]), from the notifications read model alone,
//! so that delivery never slows or fails a command.
//!
//! Each channel's worker does two things side by side. It fills the outbox
//! (`notification_deliveries`, [`outbox`]) with the deliveries of every new
//! notification, woken by the notifications projection on
//! [`WAKE_CHANNEL`] and polling besides; and it makes what is due
//! ([`sending`]), each delivery in a transaction that holds its row locked
//! while the receiver is talked to, so that a delivery is marked made only
//! once the receiver has accepted it, and no two workers make the same one.
//! A failed delivery is tried again after growing pauses, and set aside
//! after [`Retry::attempts`] with its last error.

mod outbox;
mod sending;

use std::future::Future;
use std::time::Duration;

use futures::future::{FutureExt, Shared};
use projections::notifications::{Fresh, WAKE_CHANNEL};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::background::StopSignal;
pub use sending::Due;

/// The longest the worker waits before it looks for new notifications and
/// due deliveries again, should a wake-up be missed.
const POLL: Duration = Duration::from_secs(1);
/// The pause after Postgres failed the worker.
const DATABASE_PAUSE: Duration = Duration::from_secs(1);
/// How long the worker lets announcements gather before it queues what
/// they announced.
const GATHER: Duration = Duration::from_millis(100);
/// Deliveries a worker makes at once, so that a receiver slow to answer
/// holds up no more than one of them.
const SENDERS: usize = 4;

/// How a failed delivery is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts before the delivery is set aside.
    pub attempts: u32,
    /// The pause after the first failure, doubled after each further one.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Retry {
    /// The pause after the `failures`th failed attempt.
    pub fn pause(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first_pause
            .saturating_mul(1 << doublings)
            .min(self.max_pause)
    }
}

/// A delivery to queue: a notification and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The notification.
    pub notification_id: Uuid,
    /// The recipient of an e-mail, the webhook of a webhook.
    pub target: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its log position.
    pub position: i64,
}

impl Target {
    /// The delivery of `fresh` to `target`.
    pub fn of(fresh: &Fresh, target: Uuid) -> Self {
        Self {
            notification_id: fresh.notification.id,
            target,
            kind: fresh.notification.kind.clone(),
            position: fresh.notification.seq,
        }
    }
}

/// Why a delivery was not made.
#[derive(Debug)]
pub enum Failure {
    /// It cannot be made (no address, no webhook any more, a kind Herald
    /// cannot write), which trying again does not change.
    Impossible(String),
    /// The receiver could not be reached, or refused it.
    Refused(String),
}

/// A way notifications leave Herald.
pub trait Channel: Send + Sync + 'static {
    /// Its name in `notification_deliveries.channel` and in metrics.
    const NAME: &'static str;

    /// How its failed deliveries are tried again.
    fn retry(&self) -> &Retry;

    /// The deliveries `fresh` notifications make, read in the transaction
    /// that queues them.
    fn targets(
        &self,
        conn: &mut PgConnection,
        fresh: &[Fresh],
    ) -> impl Future<Output = Result<Vec<Target>, sqlx::Error>> + Send;

    /// Makes one delivery, in the transaction that holds its row; the outer
    /// error is Postgres failing.
    fn deliver(
        &self,
        conn: &mut PgConnection,
        due: &Due,
    ) -> impl Future<Output = Result<Result<(), Failure>, sqlx::Error>> + Send;
}

/// How an attempt at a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted it.
    Sent,
    /// It failed, and falls due again later.
    Retried,
    /// It failed for the last time, and is set aside with its error.
    SetAside,
}

impl Outcome {
    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Retried => "retried",
            Self::SetAside => "set_aside",
        }
    }
}

/// The worker of one channel.
pub struct Worker<C: Channel> {
    pool: PgPool,
    channel: C,
    /// Tells the idle senders that deliveries were queued, so they are made
    /// at once.
    queued: Notify,
}

impl<C: Channel> Worker<C> {
    /// A worker of `channel`; on the channel's first start ever, it marks
    /// the notifications there are as already seen, so history is not
    /// delivered.
    pub async fn start(pool: PgPool, channel: C) -> Result<Self, sqlx::Error> {
        outbox::start(&pool, C::NAME).await?;
        Ok(Self {
            pool,
            channel,
            queued: Notify::new(),
        })
    }

    /// Queues and makes deliveries until stopped; a delivery being made when
    /// the stop comes is finished first.
    pub async fn run(self, stop: StopSignal) {
        let stop = stop.shared();
        let senders = (0..SENDERS).map(|_| self.keep_sending(stop.clone()));
        tokio::join!(
            self.keep_queueing(stop.clone()),
            futures::future::join_all(senders)
        );
    }

    /// Fills the outbox until stopped, coming back after every failure.
    async fn keep_queueing(&self, stop: Shared<StopSignal>) {
        let queueing = async {
            loop {
                if let Err(err) = self.follow_notifications().await {
                    tracing::warn!(%err, channel = C::NAME, "cannot queue deliveries of notifications; trying again");
                    tokio::time::sleep(DATABASE_PAUSE).await;
                }
            }
        };
        tokio::select! {
            () = queueing => {}
            () = stop => {}
        }
    }

    /// Queues what is new each time the projection announces notifications,
    /// and every [`POLL`] besides.
    async fn follow_notifications(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        loop {
            self.queue_all().await?;
            tokio::select! {
                notified = listener.recv() => { notified?; }
                () = tokio::time::sleep(POLL) => {}
            }
            // Under load every batch of the projection announces itself;
            // the deliveries of those of a moment are queued together.
            tokio::time::sleep(GATHER).await;
        }
    }

    /// Queues batches until no notification is left after the cursor.
    async fn queue_all(&self) -> Result<(), sqlx::Error> {
        loop {
            let queued = outbox::queue(&self.pool, &self.channel).await?;
            if queued.deliveries > 0 {
                // Senders busy with a delivery look again when they finish.
                self.queued.notify_waiters();
            }
            if queued.notifications == 0 {
                return Ok(());
            }
        }
    }

    /// Makes due deliveries one after another until stopped.
    async fn keep_sending(&self, stop: Shared<StopSignal>) {
        loop {
            let wait = match sending::deliver_one(&self.pool, &self.channel).await {
                Ok(Some(outcome)) => {
                    metrics::counter!(
                        "herald_notification_deliveries_total",
                        "channel" => C::NAME,
                        "outcome" => outcome.as_str()
                    )
                    .increment(1);
                    Duration::ZERO
                }
                Ok(None) => self.until_next_due().await,
                Err(err) => {
                    tracing::warn!(%err, channel = C::NAME, "cannot deliver notifications; trying again");
                    DATABASE_PAUSE
                }
            };
            tokio::select! {
                biased;
                () = stop.clone() => return,
                () = self.queued.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the next delivery falls due, at most [`POLL`].
    async fn until_next_due(&self) -> Duration {
        match sending::next_due_in(&self.pool, C::NAME).await {
            Ok(Some(wait)) => wait.min(POLL),
            Ok(None) => POLL,
            Err(err) => {
                tracing::warn!(%err, channel = C::NAME, "cannot read when deliveries fall due");
                DATABASE_PAUSE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_first_up_to_the_longest() {
        let retry = Retry {
            attempts: 8,
            first_pause: Duration::from_secs(30),
            max_pause: Duration::from_secs(300),
        };
        let pauses: Vec<u64> = (1..=6).map(|n| retry.pause(n).as_secs()).collect();
        assert_eq!(pauses, [30, 60, 120, 240, 300, 300]);
        assert_eq!(retry.pause(u32::MAX), Duration::from_secs(300));
    }
}
