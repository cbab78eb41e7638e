//! End-to-end lag without disturbing what is measured: one watcher looks up
//! the log position of every answered command and follows the projections'
//! checkpoints, which each projection commits in the same transaction as its
//! read-model rows. The moment a checkpoint reaches a command's position,
//! its effect is readable in that read model. (Reading with each command's
//! `consistency` token would time the same thing, but hundreds of reads
//! polling at once load the very database being measured.)

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use commands::ConsistencyToken;
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::stats::{self, Percentiles};

/// How often positions and checkpoints are looked at.
const POLL: Duration = Duration::from_millis(2);
/// A command whose effect is not seen by then counts as a failure.
pub const GIVE_UP: Duration = Duration::from_secs(30);

/// An answered command: its token, the read models that show it, and when
/// it was answered.
pub type Answered = (ConsistencyToken, &'static [&'static str], Instant);
/// Where clients report answered commands.
pub type LagSender = mpsc::UnboundedSender<Answered>;

/// Lag per read model.
#[derive(Debug, Default)]
pub struct LagReport {
    /// Percentiles per read model.
    pub lag: BTreeMap<&'static str, Percentiles>,
    /// Commands not seen within [`GIVE_UP`], per read model.
    pub failures: BTreeMap<&'static str, u64>,
}

/// The watcher.
pub struct LagTracker {
    sender: LagSender,
    task: tokio::task::JoinHandle<Result<LagReport, sqlx::Error>>,
}

struct Waiting {
    token: ConsistencyToken,
    models: &'static [&'static str],
    answered: Instant,
    position: Option<i64>,
    seen: Vec<bool>,
}

impl LagTracker {
    /// Starts watching `pool`'s log and checkpoints.
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            task: tokio::spawn(watch(pool, receiver)),
        }
    }

    /// A sender for one client.
    pub fn sender(&self) -> LagSender {
        self.sender.clone()
    }

    /// Waits for the commands already reported, then reports.
    pub async fn finish(self) -> anyhow::Result<LagReport> {
        drop(self.sender);
        Ok(self.task.await??)
    }
}

async fn watch(
    pool: PgPool,
    mut receiver: mpsc::UnboundedReceiver<Answered>,
) -> Result<LagReport, sqlx::Error> {
    let mut histograms: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    let mut failures: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        loop {
            match receiver.try_recv() {
                Ok((token, models, answered)) => waiting.push(Waiting {
                    token,
                    models,
                    answered,
                    position: None,
                    seen: vec![false; models.len()],
                }),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        find_positions(&pool, &mut waiting).await?;
        let checkpoints: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT projection, position FROM projection_checkpoints",
        )
        .fetch_all(&pool)
        .await?
        .into_iter()
        .collect();
        waiting.retain_mut(|command| {
            let timed_out = now.duration_since(command.answered) > GIVE_UP;
            for (index, model) in command.models.iter().enumerate() {
                if command.seen[index] {
                    continue;
                }
                let applied = command.position.is_some_and(|position| {
                    checkpoints
                        .get(*model)
                        .is_some_and(|checkpoint| *checkpoint >= position)
                });
                if applied {
                    command.seen[index] = true;
                    let histogram = histograms.entry(*model).or_insert_with(stats::histogram);
                    stats::record(histogram, now.duration_since(command.answered));
                } else if timed_out {
                    command.seen[index] = true;
                    *failures.entry(*model).or_default() += 1;
                }
            }
            !command.seen.iter().all(|seen| *seen)
        });
        tokio::time::sleep(POLL).await;
    }
    Ok(LagReport {
        lag: histograms
            .iter()
            .map(|(model, histogram)| (*model, Percentiles::of(histogram)))
            .collect(),
        failures,
    })
}

/// Looks up, in one query, the positions of the commands not yet numbered.
async fn find_positions(pool: &PgPool, waiting: &mut [Waiting]) -> Result<(), sqlx::Error> {
    let unknown: Vec<usize> = (0..waiting.len())
        .filter(|index| waiting[*index].position.is_none())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let (mut types, mut ids, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    for index in &unknown {
        let token = &waiting[*index].token;
        types.push(token.aggregate_type.clone());
        ids.push(token.aggregate_id.clone());
        versions.push(token.version as i64);
    }
    let found: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT w.n::int4, l.position
           FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS w(t, id, v, n)
           JOIN events e ON e.aggregate_type = w.t AND e.aggregate_id = w.id AND e.sequence = w.v
           JOIN event_log l ON l.event_id = e.event_id",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&versions)
    .fetch_all(pool)
    .await?;
    for (n, position) in found {
        if let Some(index) = usize::try_from(n - 1).ok().and_then(|i| unknown.get(i)) {
            waiting[*index].position = Some(position);
        }
    }
    Ok(())
}
