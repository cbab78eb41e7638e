//! Herald's background work (the commit announcer, the relay, projection
//! workers, the payment process manager, reminders, deliveries) under one stop
//! signal, so that shutdown reaches every task and the process exits only
//! when they have drained.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use commands::attachments::Storage;
use commands::gateway::PaymentGateway;
use commands::{PaymentProcess, Reminders, Thumbnails, WriteSide};
use herald_nats::follower::Source;
use herald_nats::{Relay, RelayStatus, Topology};
use projections::{Projection, Worker};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::deliveries::{self, Channel};

/// The names of everything that follows the log with a checkpoint and dead
/// letters of its own: every projection, the payment process manager, the
/// reminders of unread messages and the maker of thumbnails.
pub fn follower_names() -> Vec<&'static str> {
    Projection::ALL
        .iter()
        .map(|projection| projection.name())
        .chain([
            commands::process_manager::CHECKPOINT,
            commands::reminders::CHECKPOINT,
            commands::thumbnails::CHECKPOINT,
        ])
        .collect()
}

/// How long background tasks get to finish after the signal to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes when the background is told to stop.
pub type StopSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Background tasks that all stop on one signal.
pub struct Background {
    tasks: JoinSet<()>,
    stop: watch::Sender<()>,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::channel(()).0,
        }
    }
}

impl Background {
    /// Runs `task`, handing it the signal it must stop on.
    pub fn spawn<T>(&mut self, task: impl FnOnce(StopSignal) -> T)
    where
        T: Future<Output = ()> + Send + 'static,
    {
        let mut receiver = self.stop.subscribe();
        let stop: StopSignal = Box::pin(async move {
            let _ = receiver.changed().await;
        });
        self.tasks.spawn(task(stop));
    }

    /// Runs a relay (active or standby) until stopped; returns its status.
    pub fn relay(
        &mut self,
        pool: &PgPool,
        client: &async_nats::Client,
        topology: &Topology,
    ) -> Arc<RelayStatus> {
        let relay = Relay::new(pool.clone(), client.clone(), topology.clone());
        let status = relay.status();
        self.spawn(|stop| relay.run(stop));
        status
    }

    /// Runs a worker for each projection until stopped.
    pub fn workers(&mut self, source: &Source, projections: &[Projection]) {
        for projection in projections {
            let worker = Worker::new(source.clone(), *projection);
            self.spawn(|stop| worker.run(stop));
        }
    }

    /// Runs the booking ⇄ payment process manager (active or standby) until
    /// stopped.
    pub fn process_manager(
        &mut self,
        write: &Arc<WriteSide>,
        gateway: &Arc<dyn PaymentGateway>,
        source: &Source,
    ) {
        let process = PaymentProcess::new(write.clone(), gateway.clone(), source.clone());
        self.spawn(|stop| process.run(stop));
    }

    /// Runs the reminders of messages unread for `after` until stopped.
    pub fn reminders(&mut self, write: &Arc<WriteSide>, source: &Source, after: Duration) {
        let reminders = Reminders::new(write.clone(), source.clone(), after);
        self.spawn(|stop| reminders.run(stop));
    }

    /// Runs the maker of image attachments' thumbnails (active or standby)
    /// until stopped.
    pub fn thumbnails(&mut self, write: &Arc<WriteSide>, storage: &Storage, source: &Source) {
        let thumbnails = Thumbnails::new(write.clone(), storage.clone(), source.clone());
        self.spawn(|stop| thumbnails.run(stop));
    }

    /// Runs a channel's worker of deliveries of notifications until
    /// stopped.
    pub fn deliveries<C: Channel>(&mut self, worker: deliveries::Worker<C>) {
        self.spawn(|stop| worker.run(stop));
    }

    /// Signals every task to stop and waits for them, at most [`DRAIN_TIMEOUT`].
    pub async fn drain(mut self) {
        drop(self.stop);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
            tracing::warn!("background tasks did not stop in time");
        }
    }
}
