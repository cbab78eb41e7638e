//! `herald replay` and `herald dead-letters`: rebuilding read models, and the
//! entries projections set aside.

use projections::Projection;

use super::{chosen, progress_bar, BoxError};
use crate::config::{DeadLetterArgs, ReplayArgs};
use crate::db::existing_pool;

/// Replays the chosen projections (or, with `--resume`, those the last run
/// left) side by side, with a progress bar each: each one is mostly Postgres
/// reading the log or writing tables while Herald folds another, so together
/// they finish sooner than one by one.
pub(super) async fn replay(args: ReplayArgs) -> Result<(), BoxError> {
    let pool = existing_pool(&args.database).await?;
    let chosen = if args.resume {
        projections::pending(&pool).await?
    } else {
        let chosen = chosen(args.projections);
        projections::plan(&pool, &chosen).await?;
        chosen
    };
    if chosen.is_empty() {
        println!("nothing to resume: the last replay finished");
        return Ok(());
    }
    let replays = chosen.into_iter().map(|projection| {
        let pool = &pool;
        async move {
            let bar = progress_bar(
                projection.name(),
                "{prefix:>8} [{bar:30}] {pos}/{len} events, {rate}, ETA {eta}",
            );
            let report = projections::replay(pool, projection, &|at, target| {
                bar.set_length(target.max(0) as u64);
                bar.set_position(at.max(0) as u64);
            })
            .await?;
            bar.finish_and_clear();
            println!(
                "{projection}: {} entries in {:.2}s ({:.0} events/s), swapped in at position {}",
                report.entries,
                report.elapsed.as_secs_f64(),
                report.rate(),
                report.position
            );
            Ok::<_, BoxError>(())
        }
    });
    futures::future::try_join_all(replays).await?;
    Ok(())
}

/// Lists dead letters as JSON lines, or retries them.
pub(super) async fn dead_letters(args: DeadLetterArgs) -> Result<(), BoxError> {
    let followers = crate::background::follower_names();
    if let Some(name) = &args.follower {
        if !followers.contains(&name.as_str()) {
            return Err(format!(
                "no follower is called {name:?}: one of {}",
                followers.join(", ")
            )
            .into());
        }
    }
    let chosen = |name: &str| args.follower.as_deref().is_none_or(|wanted| wanted == name);
    let pool = existing_pool(&args.database).await?;
    if args.retry {
        if args.follower.as_deref() == Some(commands::process_manager::CHECKPOINT) {
            return Err(
                "the payment process manager's dead letters cannot be retried from \
                        the command line; they are listed for an operator to act on"
                    .into(),
            );
        }
        for projection in Projection::ALL.into_iter().filter(|p| chosen(p.name())) {
            let (applied, failing) = projections::retry_dead_letters(&pool, projection).await?;
            println!("{projection}: {applied} applied, {failing} still failing");
        }
        return Ok(());
    }
    let mut listed = 0;
    for letter in projections::dead_letters(&pool).await? {
        if chosen(&letter.projection) {
            println!("{}", serde_json::to_string(&letter)?);
            listed += 1;
        }
    }
    if listed == 0 {
        eprintln!("no dead letters");
    }
    Ok(())
}
