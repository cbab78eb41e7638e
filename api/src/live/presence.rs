//! Presence: who is online, kept in a NATS key-value bucket so that every
//! Herald instance knows of the connections of every other.
//!
//! Each instance announces every user holding at least one live connection
//! (WebSocket or SSE) to it under the key `<user id>.<instance id>` of the
//! bucket [`Topology::presence_bucket`], whose `max_age` is the configured
//! time-to-live, and puts the key again at every heartbeat (a third of the
//! time-to-live). A user is online while any of their keys lives, so one
//! with connections on two instances stays online when one instance dies.
//! When the last connection to an instance closes, the instance deletes its
//! key; when an instance dies, its keys expire by `max_age`.
//!
//! NATS 2.9 leaves no delete marker when `max_age` removes a key, so an
//! expiry cannot be watched: every instance watches the bucket's puts and
//! deletes and keeps, for each key, the moment it expires unless heartbeated
//! again, and sweeps the expired ones itself. Each change of a user between
//! online and offline goes to the sockets of the people who share a chat with
//! them ([`domain::access::may_see_presence`]).
//!
//! When someone was last seen outlives their presence, so it is kept in a
//! second bucket without a time-to-live ([`Topology::last_seen_bucket`]),
//! written with every heartbeat and when they leave.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use herald_nats::jetstream::ensure_key_value;
use herald_nats::Topology;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HubCommand;

/// How long a read waits for last-seen times before answering without them.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// The most last-seen times kept in memory; past it, they are read anew.
const SEEN_KEPT: usize = 65_536;
/// The longest pause before trying NATS again after a failure.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Puts of one heartbeat in flight at once.
const HEARTBEAT_CONCURRENCY: usize = 64;
/// How long a graceful shutdown may spend withdrawing this instance's keys.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether someone is online, as the members of a chat are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub struct MemberPresence {
    /// Whether they hold a live connection (WebSocket or SSE) to any Herald
    /// instance.
    pub online: bool,
    /// When they were last online; `null` while they are, and for someone
    /// never seen.
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl MemberPresence {
    /// Someone online.
    const ONLINE: Self = Self {
        online: true,
        last_seen_at: None,
    };
    /// Someone whose presence is not known here: offline, never seen.
    pub const UNKNOWN: Self = Self {
        online: false,
        last_seen_at: None,
    };
}

/// The frame a co-member's socket gets when someone comes or goes.
#[derive(Serialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: &'static str,
    user_id: Uuid,
    #[serde(flatten)]
    presence: MemberPresence,
}

/// One instance's key of one user, as this instance last heard of it.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// When the key expires unless heartbeated again.
    expires: Instant,
    /// The heartbeat's time, as the instance that wrote it says.
    at: DateTime<Utc>,
}

/// Presence as this instance knows it, shared by the hub's task and the
/// request handlers.
pub struct Presence {
    ttl: Duration,
    /// Live connections to this instance, per user.
    local: Mutex<HashMap<Uuid, usize>>,
    /// Users whose first connection here opened or last one closed since the
    /// task last looked.
    dirty: Mutex<HashSet<Uuid>>,
    wake: Notify,
    /// Every user online anywhere: their keys by instance.
    online: Mutex<HashMap<Uuid, HashMap<String, Heard>>>,
    /// The last-seen bucket, once the task has opened it.
    last_seen: OnceLock<kv::Store>,
    /// Last-seen times read from the bucket.
    seen: Mutex<Seen>,
}

/// Last-seen times of offline users, as read from the bucket. Someone's
/// changes only when they come and go again, and the watch hears them go, so
/// each is kept until then (only offline users' times are read) and polls of
/// a chat ask NATS nothing.
#[derive(Default)]
struct Seen {
    times: HashMap<Uuid, Option<DateTime<Utc>>>,
    /// Counts the times forgotten, so that a read begun before one was
    /// forgotten does not keep what it read.
    forgotten: u64,
}

impl Seen {
    fn forget(&mut self, user: &Uuid) {
        self.times.remove(user);
        self.forgotten += 1;
    }

    fn forget_all(&mut self) {
        self.times.clear();
        self.forgotten += 1;
    }
}

/// One live connection of a user; dropping it ends it for presence.
pub struct Present {
    presence: Arc<Presence>,
    user: Uuid,
}

impl Drop for Present {
    fn drop(&mut self) {
        let mut local = lock(&self.presence.local);
        if let Some(count) = local.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                local.remove(&self.user);
                drop(local);
                self.presence.touch(self.user);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Presence {
    /// Presence whose keys live `ttl` after their last heartbeat.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            local: Mutex::default(),
            dirty: Mutex::default(),
            wake: Notify::new(),
            online: Mutex::default(),
            last_seen: OnceLock::new(),
            seen: Mutex::default(),
        }
    }

    /// Counts a live connection of `user` until the returned guard is
    /// dropped; their first one announces them online.
    pub fn arrive(self: &Arc<Self>, user: Uuid) -> Present {
        let first = {
            let mut local = lock(&self.local);
            let count = local.entry(user).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.touch(user);
        }
        Present {
            presence: self.clone(),
            user,
        }
    }

    fn touch(&self, user: Uuid) {
        lock(&self.dirty).insert(user);
        self.wake.notify_one();
    }

    /// Whether each of `users` is online, and when those who are not were
    /// last seen. Callers decide first that the asker may see it
    /// ([`domain::access::may_see_presence`]). Without NATS, the last-seen
    /// times are left out rather than holding the read up.
    pub async fn of(&self, users: &[Uuid]) -> BTreeMap<Uuid, MemberPresence> {
        let now = Instant::now();
        let online: HashSet<Uuid> = {
            let view = lock(&self.online);
            (users.iter())
                .filter(|user| {
                    view.get(user)
                        .is_some_and(|keys| keys.values().any(|heard| heard.expires > now))
                })
                .copied()
                .collect()
        };
        let (mut seen, unknown, forgotten) = {
            let kept = lock(&self.seen);
            let mut seen = HashMap::new();
            let mut unknown = Vec::new();
            for user in users.iter().filter(|user| !online.contains(user)) {
                match kept.times.get(user) {
                    Some(at) => {
                        seen.insert(*user, *at);
                    }
                    None => unknown.push(*user),
                }
            }
            (seen, unknown, kept.forgotten)
        };
        if let (Some(store), false) = (self.last_seen.get(), unknown.is_empty()) {
            let lookups = unknown.iter().map(|user| {
                let (store, user) = (store.clone(), *user);
                async move {
                    let value = store.get(user.to_string()).await.ok()?;
                    Some((user, value.and_then(|value| parse_time(&value))))
                }
            });
            let read = tokio::time::timeout(LOOKUP_TIMEOUT, futures::future::join_all(lookups))
                .await
                .unwrap_or_default();
            let read: Vec<_> = read.into_iter().flatten().collect();
            let mut kept = lock(&self.seen);
            if kept.forgotten == forgotten {
                if kept.times.len() + read.len() > SEEN_KEPT {
                    kept.times.clear();
                }
                kept.times.extend(read.iter().copied());
            }
            seen.extend(read);
        }
        (users.iter())
            .map(|user| {
                let presence = if online.contains(user) {
                    MemberPresence::ONLINE
                } else {
                    MemberPresence {
                        online: false,
                        last_seen_at: seen.get(user).copied().flatten(),
                    }
                };
                (*user, presence)
            })
            .collect()
    }

    /// Takes in one put or delete of the presence bucket; `Some` when it
    /// turns its user online or offline.
    fn hear(&self, entry: &kv::Entry) -> Option<(Uuid, MemberPresence)> {
        let (user, instance) = entry.key.split_once('.')?;
        let user: Uuid = user.parse().ok()?;
        let mut view = lock(&self.online);
        match entry.operation {
            kv::Operation::Put => {
                let at = parse_time(&entry.value).unwrap_or_else(Utc::now);
                // A key read when the watch starts may be most of a
                // time-to-live old already.
                let age = (Utc::now() - at).to_std().unwrap_or_default();
                let heard = Heard {
                    expires: Instant::now() + self.ttl.saturating_sub(age),
                    at,
                };
                let keys = view.entry(user).or_default();
                let was_online = !keys.is_empty();
                keys.insert(instance.to_owned(), heard);
                (!was_online).then_some((user, MemberPresence::ONLINE))
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                let keys = view.get_mut(&user)?;
                keys.remove(instance)?;
                if !keys.is_empty() {
                    return None;
                }
                view.remove(&user);
                lock(&self.seen).forget(&user);
                let offline = MemberPresence {
                    online: false,
                    last_seen_at: Some(Utc::now()),
                };
                Some((user, offline))
            }
        }
    }

    /// Drops the keys that expired without a heartbeat, as the bucket's
    /// `max_age` does; the users left with none are offline since their
    /// last heartbeat.
    fn sweep(&self) -> Vec<(Uuid, MemberPresence)> {
        let now = Instant::now();
        let mut view = lock(&self.online);
        let mut seen = lock(&self.seen);
        let mut gone = Vec::new();
        view.retain(|user, keys| {
            let last = keys.values().map(|heard| heard.at).max();
            keys.retain(|_, heard| heard.expires > now);
            if keys.is_empty() {
                let offline = MemberPresence {
                    online: false,
                    last_seen_at: last,
                };
                seen.forget(user);
                gone.push((*user, offline));
                false
            } else {
                true
            }
        });
        gone
    }

    /// Forgets every key: the watch starts again and reads them anew.
    fn forget(&self) -> Vec<Uuid> {
        lock(&self.seen).forget_all();
        lock(&self.online).drain().map(|(user, _)| user).collect()
    }
}

fn parse_time(value: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(value).ok()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

fn now_value() -> bytes::Bytes {
    Utc::now().to_rfc3339().into()
}

/// The task that announces this instance's users and watches everyone's.
pub(super) struct Announcer {
    presence: Arc<Presence>,
    jetstream: jetstream::Context,
    topology: Topology,
    pool: PgPool,
    hub: mpsc::WeakSender<HubCommand>,
    /// This process, in the keys it writes.
    instance: String,
    /// Users whose key this instance has put and not deleted.
    announced: HashSet<Uuid>,
    /// The buckets, once opened.
    stores: Option<(kv::Store, kv::Store)>,
}

impl Announcer {
    pub(super) fn new(
        presence: Arc<Presence>,
        client: async_nats::Client,
        topology: Topology,
        pool: PgPool,
        hub: mpsc::WeakSender<HubCommand>,
    ) -> Self {
        Self {
            presence,
            jetstream: jetstream::new(client),
            topology,
            pool,
            hub,
            instance: Uuid::new_v4().simple().to_string(),
            announced: HashSet::new(),
            stores: None,
        }
    }

    /// Announces and watches until `stop` completes, waiting out NATS
    /// failures; then withdraws this instance's keys, so that its users go
    /// offline at once rather than a time-to-live later.
    pub(super) async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = &mut stop => break,
                result = self.serve() => {
                    if let Err(err) = result {
                        tracing::warn!(%err, "presence paused");
                    }
                }
            }
            // Whoever went quiet meanwhile is offline, as far as this instance knows.
            for user in self.presence.forget() {
                let offline = MemberPresence {
                    online: false,
                    last_seen_at: Some(Utc::now()),
                };
                tell(self.pool.clone(), self.hub.clone(), user, offline).await;
            }
            failures = (failures + 1).min(7);
            let pause = Duration::from_millis(40 << failures).min(MAX_RETRY);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        let withdraw = self.withdraw();
        if tokio::time::timeout(WITHDRAW_TIMEOUT, withdraw)
            .await
            .is_err()
        {
            tracing::warn!("presence keys left to expire");
        }
    }

    async fn serve(&mut self) -> Result<(), async_nats::Error> {
        let ttl = self.presence.ttl;
        let store = ensure_key_value(
            &self.jetstream,
            &self.topology.presence_bucket(),
            ttl,
            jetstream::stream::StorageType::Memory,
        )
        .await?;
        // Kept on disk and for good: when someone was last seen outlives a restart.
        let seen = ensure_key_value(
            &self.jetstream,
            &self.topology.last_seen_bucket(),
            Duration::ZERO,
            jetstream::stream::StorageType::File,
        )
        .await?;
        let _ = self.presence.last_seen.set(seen.clone());
        self.stores = Some((store.clone(), seen.clone()));
        let mut watch = store.watch_all().await?;
        // After a failure, announce everyone present here again.
        self.announced.clear();
        let local: Vec<Uuid> = lock(&self.presence.local).keys().copied().collect();
        lock(&self.presence.dirty).extend(local);
        self.presence.wake.notify_one();

        let beat = (ttl / 3).max(Duration::from_millis(100));
        let mut heartbeat = tokio::time::interval(beat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(
            (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(entry) => {
                        if let Some((user, presence)) = self.presence.hear(&entry?) {
                            tell(self.pool.clone(), self.hub.clone(), user, presence).await;
                        }
                    }
                    None => return Err("the presence watch ended".into()),
                },
                () = self.presence.wake.notified() => self.reconcile(&store, &seen).await?,
                _ = heartbeat.tick() => self.heartbeat(&store, &seen).await?,
                _ = sweep.tick() => {
                    for (user, presence) in self.presence.sweep() {
                        tell(self.pool.clone(), self.hub.clone(), user, presence).await;
                    }
                }
            }
        }
    }

    /// This instance's key of `user` in the presence bucket.
    fn key(&self, user: Uuid) -> String {
        format!("{user}.{}", self.instance)
    }

    /// Puts the key of each user whose first connection opened here, and
    /// deletes that of each whose last one closed.
    async fn reconcile(
        &mut self,
        store: &kv::Store,
        seen: &kv::Store,
    ) -> Result<(), async_nats::Error> {
        let dirty: Vec<Uuid> = lock(&self.presence.dirty).drain().collect();
        for user in dirty {
            let here = lock(&self.presence.local).contains_key(&user);
            let key = self.key(user);
            if here && !self.announced.contains(&user) {
                let at = now_value();
                seen.put(user.to_string(), at.clone()).await?;
                store.put(&key, at).await?;
                self.announced.insert(user);
            } else if !here && self.announced.contains(&user) {
                // Last seen first, so whoever sees them go reads the new time.
                seen.put(user.to_string(), now_value()).await?;
                store.delete(&key).await?;
                self.announced.remove(&user);
            }
        }
        Ok(())
    }

    /// Puts every announced user's key and last-seen time again.
    async fn heartbeat(
        &self,
        store: &kv::Store,
        seen: &kv::Store,
    ) -> Result<(), async_nats::Error> {
        let at = now_value();
        let users: Vec<Uuid> = self.announced.iter().copied().collect();
        let puts = users.into_iter().map(|user| {
            let (store, seen, at) = (store.clone(), seen.clone(), at.clone());
            let key = self.key(user);
            async move {
                // Last seen first, so that it is never older than the key.
                seen.put(user.to_string(), at.clone()).await?;
                store.put(key, at).await?;
                Ok::<(), async_nats::Error>(())
            }
        });
        let results: Vec<_> = futures::stream::iter(puts)
            .buffer_unordered(HEARTBEAT_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Deletes this instance's keys on the way out.
    async fn withdraw(&mut self) {
        let Some((store, seen)) = self.stores.clone() else {
            return;
        };
        for user in std::mem::take(&mut self.announced) {
            let _ = seen.put(user.to_string(), now_value()).await;
            let _ = store.delete(self.key(user)).await;
        }
    }
}

/// Hands a change of `user`'s presence to the hub for the sockets of
/// the people who share a chat with them.
async fn tell(
    pool: PgPool,
    hub: mpsc::WeakSender<HubCommand>,
    user: Uuid,
    presence: MemberPresence,
) {
    let chats = match super::chats_of(&pool, user, 0).await {
        Ok((_, chats)) => chats,
        Err(err) => {
            tracing::warn!(%err, "cannot tell who shares a chat with someone who came or went");
            return;
        }
    };
    if chats.is_empty() {
        return;
    }
    let frame = Frame {
        kind: "presence",
        user_id: user,
        presence,
    };
    // Ids, a flag and a time always serialize.
    let frame: Utf8Bytes = serde_json::to_string(&frame).unwrap_or_default().into();
    if let Some(hub) = hub.upgrade() {
        let _ = hub.send(HubCommand::Presence { user, chats, frame }).await;
    }
}
