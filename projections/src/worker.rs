//! A projection worker: the log's follower loop applying a projection's
//! batches, each in the transaction that moves its checkpoint.

use std::future::Future;

use herald_nats::follower::{ApplyError, Follower, Source, TransactionalFollower};
use herald_nats::LogEntry;
use sqlx::PgConnection;

use crate::Projection;

/// Keeps one projection up to date from the stream.
pub struct Worker {
    source: Source,
    projection: Projection,
}

impl Worker {
    /// A worker for `projection`, following the log of `source`.
    pub fn new(source: Source, projection: Projection) -> Self {
        Self { source, projection }
    }

    /// Consumes until `shutdown` completes. Failures of NATS or Postgres are
    /// waited out; nothing unapplied is acknowledged, so nothing is lost.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.source
            .follow_in_transaction(&self.projection, shutdown)
            .await;
    }
}

impl Follower for Projection {
    const BATCH: usize = 1000;

    fn name(&self) -> &str {
        Projection::name(*self)
    }

    fn follows(&self, entry: &LogEntry) -> bool {
        Projection::follows(*self, &entry.aggregate_type, &entry.event_type)
    }
}

impl TransactionalFollower for Projection {
    fn apply(
        &self,
        tx: &mut PgConnection,
        entries: &[LogEntry],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        self.apply_all(tx, entries)
    }
}
