//! `herald relay` and `herald project`: parts of Herald run alone.

use herald_nats::follower::Source;

use super::{chosen, nats, BoxError};
use crate::background::Background;
use crate::config::{ProjectArgs, RelayArgs};
use crate::db::existing_pool;

/// Only the relay.
pub(super) async fn relay(args: RelayArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args.database).await?;
    let (client, topology) = nats(&args.nats).await?;
    let mut background = Background::default();
    background.relay(&pool, &client, &topology);
    crate::shutdown_signal().await;
    background.drain().await;
    Ok(())
}

/// Only projection workers.
pub(super) async fn project(args: ProjectArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args.database).await?;
    let chosen = chosen(args.projections);
    let (client, topology) = nats(&args.nats).await?;
    let mut background = Background::default();
    background.workers(&Source::new(pool, client, topology), &chosen);
    crate::shutdown_signal().await;
    background.drain().await;
    Ok(())
}
