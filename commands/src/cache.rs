//! Recently used aggregates, kept in memory with their version so that a
//! command does not reload its aggregate's history.
//!
//! A cached state may run ahead of the log: a command's events are applied to
//! it as soon as they are decided, so the next command on the aggregate is
//! decided without waiting for the previous one's commit. When an append
//! fails, its entry's generation moves on, which discards that state and every
//! state decided after it; the next command reloads from the store. A write by
//! another process is caught by the store's version check, and also ends in a
//! reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use tokio::sync::{watch, Mutex};
use uuid::Uuid;

/// How far the log has come for one aggregate, as this process knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Moves on whenever a state decided on is discarded.
    pub generation: u64,
    /// The version known to be committed in this generation.
    pub committed: u64,
}

/// The cached aggregate state a command was decided on: its entry's progress
/// and the generation of the state at that time.
#[derive(Clone)]
pub(crate) struct Basis {
    pub progress: Arc<watch::Sender<Mark>>,
    pub generation: u64,
}

impl Basis {
    /// Whether the state is still the entry's current one, i.e. no earlier
    /// append of the same aggregate failed since.
    pub fn is_current(&self) -> bool {
        self.progress.borrow().generation == self.generation
    }

    /// The state is committed up to `version`.
    pub fn committed(&self, version: u64) {
        self.progress.send_if_modified(|mark| {
            let advanced = mark.generation == self.generation && mark.committed < version;
            if advanced {
                mark.committed = version;
            }
            advanced
        });
    }

    /// The state is not to be decided on any more: it, and every state
    /// decided after it, is discarded, and the next command reloads.
    pub fn discard(&self) {
        self.progress.send_if_modified(|mark| {
            let current = mark.generation == self.generation;
            if current {
                mark.generation += 1;
            }
            current
        });
    }
}

/// An aggregate's state as its commands left it, committed or not.
pub(crate) struct Slot<A> {
    pub aggregate: A,
    /// The sequence of the last event applied to `aggregate`.
    pub version: u64,
    /// The generation `aggregate` belongs to; `None` until loaded.
    pub generation: Option<u64>,
}

/// One cached aggregate: its state, which commands take turns on, and its
/// progress, which the batch task moves.
pub(crate) struct Entry<A> {
    pub slot: Mutex<Slot<A>>,
    pub progress: Arc<watch::Sender<Mark>>,
}

impl<A: Default> Default for Entry<A> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(Slot {
                aggregate: A::default(),
                version: 0,
                generation: None,
            }),
            progress: Arc::new(watch::Sender::new(Mark::default())),
        }
    }
}

impl<A> Entry<A> {
    /// Waits until the state of `generation` at `version` is committed;
    /// false when it was discarded instead.
    pub async fn settled(&self, generation: u64, version: u64) -> bool {
        let mut marks = self.progress.subscribe();
        marks
            .wait_for(|mark| mark.generation != generation || mark.committed >= version)
            .await
            .is_ok_and(|mark| mark.generation == generation)
    }
}

/// At most `2 × capacity` aggregates of one type: entries used since the last
/// turnover, and those used in the turn before, which are dropped at the next.
pub struct Cache<A> {
    capacity: usize,
    turns: SyncMutex<Turns<A>>,
}

/// The entries used in this turn, and those used in the one before.
struct Turns<A> {
    recent: HashMap<Uuid, Arc<Entry<A>>>,
    older: HashMap<Uuid, Arc<Entry<A>>>,
}

impl<A: Default> Cache<A> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            turns: SyncMutex::new(Turns {
                recent: HashMap::new(),
                older: HashMap::new(),
            }),
        }
    }

    /// The entry of aggregate `id`, new and empty when it is not cached.
    ///
    /// An entry dropped while a command still holds it is harmless: the next
    /// command loads afresh, and the store's version check orders the two.
    pub(crate) fn entry(&self, id: Uuid) -> Arc<Entry<A>> {
        let mut turns = self
            .turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Turns { recent, older } = &mut *turns;
        if let Some(entry) = recent.get(&id) {
            return entry.clone();
        }
        let entry = older.remove(&id).unwrap_or_default();
        if recent.len() >= self.capacity {
            *older = std::mem::take(recent);
        }
        recent.insert(id, entry.clone());
        entry
    }
}
