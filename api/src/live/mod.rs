//! The live gateway's hub: one JetStream subscription per Herald process,
//! fanned out in-process to WebSocket connections and SSE streams.
//!
//! Each process follows the whole event stream with one ephemeral *ordered*
//! consumer delivering from "now" on `<prefix>.events.>` (NATS 2.9 allows one
//! filter subject). The whole stream rather than only chats, because positions
//! are dense over the whole log: a jump in position proves that something was
//! missed (a reconnect, a recreated consumer), and the hub reads exactly the
//! missing entries from the Postgres log before going on. SSE streams need the
//! booking and payment entries too. A sender on one instance therefore reaches
//! a member connected to any other instance, and no connection ever creates a
//! consumer of its own.
//!
//! The hub is a single task that owns every connection's chat set, keyed both
//! ways (chat → connections, user → connections). It applies membership events
//! as it routes them, in log order, so a member removed at position `p` gets
//! nothing after `p`, and one added at `p` gets everything from `p` on.
//!
//! Beside the log, the hub carries what is never stored: who is online
//! (`presence.rs`, a NATS key-value bucket) and who is typing (`typing.rs`,
//! a plain NATS subject), each to the sockets of the chats' members.

mod audience;
mod notices;
mod presence;
mod typing;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::extract::ws::Utf8Bytes;
use domain::chat::ChatEvent;
use futures::StreamExt;
use herald_nats::follower::FollowError;
use herald_nats::{log, trace, LogEntry, Topology};
use projections::Projection;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

pub use audience::{Audience, AudienceError};
pub use notices::Notice;
pub use presence::{MemberPresence, Presence, Present};

/// The aggregate type whose events go to WebSocket connections.
const CHAT: &str = domain::access::AggregateKind::Chat.as_str();
/// Entries read from the Postgres log per query when filling a gap.
const FILL_BATCH: i64 = 1000;
/// How long NATS may stay quiet before the hub looks at the log head itself.
const IDLE_CATCH_UP: Duration = Duration::from_secs(1);
/// Requests from connections waiting for the hub.
const COMMAND_BUFFER: usize = 4096;

/// Tunables of the live gateway; the defaults suit production.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Frames queued for one socket before its client counts as too slow and
    /// is disconnected, so a stalled reader never grows memory without bound.
    /// Frames are shared between sockets, so a queued frame costs a pointer;
    /// the room is for bursts, such as the relay catching up after an outage.
    pub outgoing_buffer: usize,
    /// How often an idle socket is pinged; one silent for three intervals is
    /// closed.
    pub ping_interval: Duration,
    /// Longest one frame may take to reach the socket before the client is
    /// cut off as too slow.
    pub write_timeout: Duration,
    /// Entries held for a connection while its chat set is being loaded.
    pub pending_limit: usize,
    /// Entries an SSE stream may fall behind the hub before it re-reads them
    /// from the Postgres log.
    pub broadcast_capacity: usize,
    /// Sockets one user may hold open in this process at once: enough for a
    /// few devices and tabs, not for exhausting the server.
    pub sockets_per_user: usize,
    /// How long someone stays online after the last heartbeat of the
    /// instance they are connected to: the presence bucket's `max_age`.
    /// Heartbeats come every third of it, so a dead instance's users go
    /// offline within it, and a live one's never do.
    pub presence_ttl: Duration,
    /// The shortest time between two typing indicators of one user in one
    /// chat; those sent sooner are dropped.
    pub typing_interval: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            outgoing_buffer: 1024,
            ping_interval: Duration::from_secs(20),
            write_timeout: Duration::from_secs(10),
            pending_limit: 4096,
            broadcast_capacity: 4096,
            sockets_per_user: 16,
            presence_ttl: Duration::from_secs(30),
            typing_interval: Duration::from_secs(1),
        }
    }
}

/// Why the hub let a connection go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Its outgoing buffer was full: the client does not read fast enough.
    TooSlow,
}

/// Why the hub could not take a connection.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The hub is not running (shutting down, or never started).
    #[error("live updates are not running on this instance")]
    Stopped,
    /// The hub did not answer in time (NATS or Postgres is away).
    #[error("live updates are unavailable right now")]
    Busy,
    /// Someone not a member said they type in a chat.
    #[error("only the chat's members may say they are typing in it")]
    NotAMember,
    /// NATS did not take a typing indicator.
    #[error("nats: {0}")]
    Nats(#[from] async_nats::PublishError),
    /// Postgres failed while loading the caller's chats.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

/// The handle connections use; cheap to share.
pub struct LiveHub {
    commands: mpsc::Sender<HubCommand>,
    entries: broadcast::Sender<Arc<LogEntry>>,
    notices: broadcast::Sender<Arc<Notice>>,
    closing: Arc<watch::Sender<bool>>,
    pool: PgPool,
    config: LiveConfig,
    next_id: AtomicU64,
    /// Sockets open per user, for [`LiveHub::admit`].
    open: Arc<std::sync::Mutex<HashMap<Uuid, usize>>>,
    /// Who is online.
    presence: Arc<Presence>,
    /// Where typing indicators are published.
    client: async_nats::Client,
    topology: Topology,
    /// How often one user may say they type in one chat.
    pace: typing::Pace,
}

/// The task behind a [`LiveHub`]; run it with [`HubRunner::run`].
pub struct HubRunner {
    pool: PgPool,
    jetstream: jetstream::Context,
    topology: Topology,
    commands: mpsc::Receiver<HubCommand>,
    /// Where notifications, presence and typing indicators are handed to
    /// the hub.
    notifying: mpsc::WeakSender<HubCommand>,
    client: async_nats::Client,
    presence: Arc<Presence>,
    entries: broadcast::Sender<Arc<LogEntry>>,
    notices: broadcast::Sender<Arc<Notice>>,
    closing: Arc<watch::Sender<bool>>,
    routes: Routes,
    /// The last position routed; `None` until the log head was first read.
    position: Option<i64>,
}

enum HubCommand {
    Attach {
        id: u64,
        user: Uuid,
        hears_new_bookings: bool,
        outgoing: mpsc::Sender<Utf8Bytes>,
        kick: oneshot::Sender<Kick>,
        position: oneshot::Sender<i64>,
    },
    Synced {
        id: u64,
        at: i64,
        chats: HashSet<Uuid>,
    },
    Detach {
        id: u64,
    },
    Notice(Arc<Notice>),
    /// `user` came or went; `frame` is for whoever shares one of `chats`.
    Presence {
        user: Uuid,
        chats: HashSet<Uuid>,
        frame: Utf8Bytes,
    },
    /// `user` types in `chat`.
    Typing {
        chat: Uuid,
        user: Uuid,
        frame: Utf8Bytes,
    },
    /// Whether the socket `id` belongs to `chat` now.
    MemberOf {
        id: u64,
        chat: Uuid,
        answer: oneshot::Sender<bool>,
    },
}

impl LiveHub {
    /// A hub following `topology`'s stream through `client`; nothing flows
    /// until the returned runner runs.
    pub fn new(
        pool: PgPool,
        client: async_nats::Client,
        topology: Topology,
        config: LiveConfig,
    ) -> (Arc<Self>, HubRunner) {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        let (entries, _) = broadcast::channel(config.broadcast_capacity.max(1));
        let (notices, _) = broadcast::channel(config.broadcast_capacity.max(1));
        let closing = Arc::new(watch::channel(false).0);
        let notifying = commands_tx.downgrade();
        let presence = Arc::new(Presence::new(config.presence_ttl));
        let hub = Arc::new(Self {
            commands: commands_tx,
            entries: entries.clone(),
            notices: notices.clone(),
            closing: closing.clone(),
            pool: pool.clone(),
            config: config.clone(),
            next_id: AtomicU64::new(1),
            open: Arc::new(std::sync::Mutex::new(HashMap::new())),
            presence: presence.clone(),
            client: client.clone(),
            topology: topology.clone(),
            pace: typing::Pace::new(config.typing_interval),
        });
        let runner = HubRunner {
            pool,
            jetstream: jetstream::new(client.clone()),
            topology,
            commands: commands_rx,
            notifying,
            client,
            presence,
            entries,
            notices,
            closing,
            routes: Routes::new(config.pending_limit),
            position: None,
        };
        (hub, runner)
    }

    /// The gateway's tunables.
    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// The database the log and read models live in.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Who is online, as this instance knows it.
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// Says that the user of the socket `connection` types in `chat`, to
    /// the chat's other members on every instance: refused unless the socket
    /// belongs to the chat ([`domain::access::may_type_in_chat`]); dropped
    /// without a word when the user said so in that chat less than
    /// [`LiveConfig::typing_interval`] ago.
    pub async fn typing(&self, connection: u64, user: Uuid, chat: Uuid) -> Result<(), LiveError> {
        let (answer, member) = oneshot::channel();
        self.commands
            .send(HubCommand::MemberOf {
                id: connection,
                chat,
                answer,
            })
            .await
            .map_err(|_| LiveError::Stopped)?;
        let member = tokio::time::timeout(Duration::from_secs(10), member)
            .await
            .map_err(|_| LiveError::Busy)?
            .map_err(|_| LiveError::Stopped)?;
        if !domain::access::may_type_in_chat(member) {
            return Err(LiveError::NotAMember);
        }
        if !self.pace.allows(user, chat) {
            return Ok(());
        }
        let frame = typing::Typing::new(chat, user).to_json();
        self.client
            .publish(self.topology.typing(&chat.to_string()), frame.into())
            .await?;
        Ok(())
    }

    /// Completes when the hub stops, so that sockets and streams end with it
    /// instead of holding a graceful shutdown open.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// Every entry the hub routes, for SSE streams. Subscribe before reading
    /// the log, so that nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogEntry>> {
        self.entries.subscribe()
    }

    /// Every notification pushed, for SSE streams, each of which keeps its
    /// caller's ([`Notice::is_for`]).
    pub fn subscribe_notices(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.notices.subscribe()
    }

    /// Registers a socket of `user`: the hub starts holding its entries at
    /// once, its chat set is loaded from the chats read model plus the log
    /// after the read model's checkpoint, and from then on every entry of its
    /// chats is queued on the returned receiver, with the user's
    /// notifications (those of new bookings when they hear of them).
    pub async fn connect(
        &self,
        user: Uuid,
        hears_new_bookings: bool,
    ) -> Result<Connection, LiveError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (outgoing, frames) = mpsc::channel(self.config.outgoing_buffer.max(1));
        let (kick, kicked) = oneshot::channel();
        let (position_tx, position_rx) = oneshot::channel();
        self.commands
            .send(HubCommand::Attach {
                id,
                user,
                hears_new_bookings,
                outgoing,
                kick,
                position: position_tx,
            })
            .await
            .map_err(|_| LiveError::Stopped)?;
        let registration = Registration {
            id,
            commands: self.commands.clone(),
        };
        let hub_position = tokio::time::timeout(Duration::from_secs(10), position_rx)
            .await
            .map_err(|_| LiveError::Busy)?
            .map_err(|_| LiveError::Stopped)?;
        let (at, chats) = chats_of(&self.pool, user, hub_position).await?;
        self.commands
            .send(HubCommand::Synced { id, at, chats })
            .await
            .map_err(|_| LiveError::Stopped)?;
        Ok(Connection {
            id,
            position: at,
            frames,
            kicked,
            _present: self.presence.arrive(user),
            _registration: registration,
        })
    }

    /// A place for one more socket of `user`, held until the admission is
    /// dropped; none when the user already holds
    /// [`LiveConfig::sockets_per_user`] of them.
    pub fn admit(&self, user: Uuid) -> Option<Admission> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = open.entry(user).or_insert(0);
        if *held >= self.config.sockets_per_user {
            return None;
        }
        *held += 1;
        Some(Admission {
            user,
            open: self.open.clone(),
        })
    }

    /// How many sockets are open on this process.
    pub fn sockets(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .sum()
    }

    /// Signals every socket and stream to end, ahead of a graceful shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// A socket's registration with the hub: its frames, and the news that it was
/// cut off. Dropping it tells the hub the socket is gone.
pub struct Connection {
    /// The socket, as [`LiveHub::typing`] knows it.
    pub id: u64,
    /// The position the socket's chat set is exact at: it receives every
    /// event of its chats after this one; earlier ones are history, read
    /// through the HTTP API.
    pub position: i64,
    /// Event frames for the socket, already serialized.
    pub frames: mpsc::Receiver<Utf8Bytes>,
    /// Fires when the hub cut the socket off.
    pub kicked: oneshot::Receiver<Kick>,
    /// Keeps the user online while the socket is open.
    _present: Present,
    _registration: Registration,
}

/// One user's place for a socket; dropping it frees the place.
pub struct Admission {
    user: Uuid,
    open: Arc<std::sync::Mutex<HashMap<Uuid, usize>>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = open.get_mut(&self.user) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.user);
            }
        }
    }
}

struct Registration {
    id: u64,
    commands: mpsc::Sender<HubCommand>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let detach = HubCommand::Detach { id: self.id };
        if let Err(mpsc::error::TrySendError::Full(detach)) = self.commands.try_send(detach) {
            let commands = self.commands.clone();
            tokio::spawn(async move {
                let _ = commands.send(detach).await;
            });
        }
    }
}

impl HubRunner {
    /// Follows the stream and the notifications until `stop` completes,
    /// waiting out NATS or Postgres failures; then tells every socket and
    /// stream to end.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let stop = futures::FutureExt::shared(Box::pin(stop));
        let notices = notices::follow(
            self.pool.clone(),
            self.notifying.clone(),
            self.notices.clone(),
            stop.clone(),
        );
        let presence = presence::Announcer::new(
            self.presence.clone(),
            self.client.clone(),
            self.topology.clone(),
            self.pool.clone(),
            self.notifying.clone(),
        )
        .run(stop.clone());
        let typing = typing::follow(
            self.client.clone(),
            self.topology.clone(),
            self.notifying.clone(),
            stop.clone(),
        );
        tokio::join!(self.route_stream(stop), notices, presence, typing);
    }

    /// Routes the stream until `stop` completes.
    async fn route_stream(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = &mut stop => break,
                result = self.follow() => match result {
                    Ok(()) => break,
                    Err(err) => tracing::warn!(%err, "live hub paused"),
                },
            }
            failures = (failures + 1).min(6);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(Duration::from_millis(50 << failures)) => {}
            }
        }
        self.closing.send_replace(true);
    }

    /// Routes entries and serves connections until every hub handle is gone.
    async fn follow(&mut self) -> Result<(), FollowError> {
        if self.position.is_none() {
            // "Now": what is already in the log is history, not news.
            self.position = Some(log::head(&self.pool).await?);
        }
        let mut messages = self.topology.new_entries(&self.jetstream).await?;
        tracing::info!("live hub following the event stream");
        // Whatever was sequenced while the consumer did not exist.
        self.fill_up_to(log::head(&self.pool).await?, Vec::new())
            .await?;
        let mut idle = tokio::time::interval(IDLE_CATCH_UP);
        let mut last_message = Instant::now();
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return Ok(()),
                },
                message = messages.next() => match message {
                    Some(Ok(message)) => {
                        last_message = Instant::now();
                        match LogEntry::from_json(&message.payload) {
                            Ok(entry) => self.advance(entry).await?,
                            // The log in Postgres fills whatever this message held.
                            Err(err) => tracing::error!(%err, "undecodable event message"),
                        }
                    }
                    Some(Err(err)) => tracing::debug!(%err, "ordered consumer error"),
                    None => return Err(FollowError::StreamEnded),
                },
                _ = idle.tick() => {
                    if last_message.elapsed() >= IDLE_CATCH_UP {
                        self.fill_up_to(log::head(&self.pool).await?, Vec::new()).await?;
                    }
                }
            }
        }
    }

    /// Routes `entry`, first reading from the log whatever came before it and
    /// was not routed yet; entries routed already change nothing.
    async fn advance(&mut self, entry: LogEntry) -> Result<(), FollowError> {
        self.fill_up_to(entry.position, vec![entry]).await
    }

    /// Routes every entry up to `target`: those `received` when they are
    /// exactly the ones missing, else read from the Postgres log.
    async fn fill_up_to(
        &mut self,
        target: i64,
        mut received: Vec<LogEntry>,
    ) -> Result<(), FollowError> {
        while let Some(position) = self.position.filter(|p| *p < target) {
            let entries =
                log::missing(&self.pool, position, target, &mut received, FILL_BATCH).await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                self.route(entry);
            }
        }
        Ok(())
    }

    /// Pushes `entry` to the sockets and streams it concerns, inside a
    /// `live` span continuing its command's trace, which counts the
    /// WebSockets it was queued for and the SSE streams it was handed to.
    fn route(&mut self, entry: LogEntry) {
        let traced = trace::of_entry("live", None, &entry).entered();
        self.position = Some(entry.position);
        let entry = Arc::new(entry);
        let mut sockets = 0;
        if entry.aggregate_type == CHAT {
            match ChatDelivery::new(&entry) {
                Ok(delivery) => sockets = self.routes.route(&Arc::new(delivery)),
                Err(err) => {
                    tracing::error!(position = entry.position, %err, "undecodable chat event")
                }
            }
        }
        // No SSE stream listening is fine.
        let streams = self.entries.send(entry).unwrap_or(0);
        if !traced.is_disabled() {
            traced.set_attribute("sockets", sockets as i64);
            traced.set_attribute("streams", streams as i64);
        }
    }

    fn handle(&mut self, command: HubCommand) {
        match command {
            HubCommand::Attach {
                id,
                user,
                hears_new_bookings,
                outgoing,
                kick,
                position,
            } => {
                self.routes
                    .attach(id, user, hears_new_bookings, outgoing, kick);
                if position.send(self.position.unwrap_or(0)).is_err() {
                    self.routes.detach(id);
                }
            }
            HubCommand::Synced { id, at, chats } => self.routes.synced(id, at, chats),
            HubCommand::Detach { id } => self.routes.detach(id),
            HubCommand::Notice(notice) => self.routes.notify(&notice),
            HubCommand::Presence { user, chats, frame } => {
                self.routes.share(chats.iter(), user, &frame);
            }
            HubCommand::Typing { chat, user, frame } => {
                self.routes.share(std::iter::once(&chat), user, &frame);
            }
            HubCommand::MemberOf { id, chat, answer } => {
                let _ = answer.send(self.routes.member_of(id, chat));
            }
        }
    }
}

/// A chat entry ready to go out: decoded for routing, serialized once for
/// every socket.
struct ChatDelivery {
    position: i64,
    chat_id: Uuid,
    event: ChatEvent,
    frame: Utf8Bytes,
}

/// The frame a socket receives for each event of its chats.
#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    position: i64,
    chat_id: Uuid,
    event_type: &'a str,
    event: &'a serde_json::Value,
}

impl ChatDelivery {
    fn new(entry: &LogEntry) -> Result<Self, serde_json::Error> {
        let event: ChatEvent = entry.decode()?;
        let chat_id = entry
            .aggregate_id
            .parse()
            .map_err(serde::de::Error::custom)?;
        let frame = serde_json::to_string(&EventFrame {
            kind: "event",
            position: entry.position,
            chat_id,
            event_type: &entry.event_type,
            event: entry
                .payload
                .get(&entry.event_type)
                .unwrap_or(&entry.payload),
        })?;
        Ok(Self {
            position: entry.position,
            chat_id,
            event,
            frame: frame.into(),
        })
    }
}

/// The chats `user` belongs to as of position `at` (at least `hub_position`):
/// the chats read model at its checkpoint, plus the membership events of the
/// log after it. The read model answers from an index instead of a scan of
/// every chat's history, and the log closes the gap to the hub's position, so
/// no membership change falls between the two.
async fn chats_of(
    pool: &PgPool,
    user: Uuid,
    hub_position: i64,
) -> Result<(i64, HashSet<Uuid>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One snapshot for the checkpoint and the rows it covers.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let checkpoint = projections::checkpoint(&mut *tx, Projection::Chats).await?;
    let rows: Vec<Uuid> =
        sqlx::query_scalar("SELECT chat_id FROM rm_chat_members WHERE user_id = $1")
            .bind(user)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let mut chats: HashSet<Uuid> = rows.into_iter().collect();
    let at = checkpoint.max(hub_position);
    let mut position = checkpoint;
    while position < at {
        let entries = log::read_after(pool, position, (at - position).min(FILL_BATCH)).await?;
        let Some(last) = entries.last().map(|entry| entry.position) else {
            break;
        };
        for entry in entries.iter().filter(|e| e.aggregate_type == CHAT) {
            let Ok(event) = entry.decode::<ChatEvent>() else {
                continue;
            };
            let Ok(chat_id) = entry.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            if event.joining().contains(&user) {
                chats.insert(chat_id);
            }
            if event.leaving() == Some(user) {
                chats.remove(&chat_id);
            }
        }
        position = last;
    }
    Ok((at, chats))
}

/// One socket as the hub sees it.
struct Socket {
    user: Uuid,
    /// Whether it gets the notifications of new bookings.
    hears_new_bookings: bool,
    outgoing: mpsc::Sender<Utf8Bytes>,
    kick: Option<oneshot::Sender<Kick>>,
    /// The position its chat set is exact at; `None` while it is loaded.
    synced_at: Option<i64>,
    chats: HashSet<Uuid>,
    /// Chat entries held while its chat set is loaded.
    pending: Vec<Arc<ChatDelivery>>,
}

/// Which socket gets which chat's entries.
struct Routes {
    sockets: HashMap<u64, Socket>,
    by_chat: HashMap<Uuid, HashSet<u64>>,
    by_user: HashMap<Uuid, HashSet<u64>>,
    syncing: HashSet<u64>,
    pending_limit: usize,
}

impl Routes {
    fn new(pending_limit: usize) -> Self {
        Self {
            sockets: HashMap::new(),
            by_chat: HashMap::new(),
            by_user: HashMap::new(),
            syncing: HashSet::new(),
            pending_limit,
        }
    }

    fn attach(
        &mut self,
        id: u64,
        user: Uuid,
        hears_new_bookings: bool,
        outgoing: mpsc::Sender<Utf8Bytes>,
        kick: oneshot::Sender<Kick>,
    ) {
        self.sockets.insert(
            id,
            Socket {
                user,
                hears_new_bookings,
                outgoing,
                kick: Some(kick),
                synced_at: None,
                chats: HashSet::new(),
                pending: Vec::new(),
            },
        );
        self.by_user.entry(user).or_default().insert(id);
        self.syncing.insert(id);
        metrics::gauge!("herald_websocket_connections").increment(1.0);
    }

    fn synced(&mut self, id: u64, at: i64, chats: HashSet<Uuid>) {
        let Some(socket) = self.sockets.get_mut(&id) else {
            return;
        };
        self.syncing.remove(&id);
        socket.synced_at = Some(at);
        for chat in &chats {
            self.by_chat.entry(*chat).or_default().insert(id);
        }
        socket.chats = chats;
        let pending = std::mem::take(&mut socket.pending);
        for delivery in pending {
            self.deliver_to(id, &delivery);
        }
    }

    fn detach(&mut self, id: u64) {
        let Some(socket) = self.sockets.remove(&id) else {
            return;
        };
        metrics::gauge!("herald_websocket_connections").decrement(1.0);
        self.syncing.remove(&id);
        for chat in &socket.chats {
            remove_from(&mut self.by_chat, chat, id);
        }
        remove_from(&mut self.by_user, &socket.user, id);
    }

    /// Routes one chat entry to every socket it concerns; how many it was
    /// queued for.
    fn route(&mut self, delivery: &Arc<ChatDelivery>) -> usize {
        let mut candidates: Vec<u64> = self
            .by_chat
            .get(&delivery.chat_id)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for user in delivery.event.joining() {
            if let Some(ids) = self.by_user.get(user) {
                candidates.extend(ids.iter().copied());
            }
        }
        candidates.extend(self.syncing.iter().copied());
        candidates.sort_unstable();
        candidates.dedup();
        (candidates.into_iter())
            .filter(|id| self.deliver_to(*id, delivery))
            .count()
    }

    /// Applies one chat entry to one socket: membership first for a joiner,
    /// the frame if the chat is theirs, membership last for a leaver (who
    /// thus learns of their own removal and nothing after it). True when the
    /// frame was queued for the socket.
    fn deliver_to(&mut self, id: u64, delivery: &Arc<ChatDelivery>) -> bool {
        let Some(socket) = self.sockets.get_mut(&id) else {
            return false;
        };
        let Some(synced_at) = socket.synced_at else {
            if socket.pending.len() < self.pending_limit {
                socket.pending.push(delivery.clone());
            } else {
                self.kick(id);
            }
            return false;
        };
        if delivery.position <= synced_at {
            return false;
        }
        let chat = delivery.chat_id;
        if delivery.event.joining().contains(&socket.user) && socket.chats.insert(chat) {
            self.by_chat.entry(chat).or_default().insert(id);
        }
        let (mut queued, mut too_slow) = (false, false);
        if socket.chats.contains(&chat) {
            match socket.outgoing.try_send(delivery.frame.clone()) {
                Ok(()) => queued = true,
                Err(mpsc::error::TrySendError::Full(_)) => too_slow = true,
                // The socket is ending; its detach is on the way.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if delivery.event.leaving() == Some(socket.user) && socket.chats.remove(&chat) {
            remove_from(&mut self.by_chat, &chat, id);
        }
        if too_slow {
            self.kick(id);
        }
        queued
    }

    /// Sends a notification to every socket it is for.
    fn notify(&mut self, notice: &Notice) {
        let ids: Vec<u64> = match notice.user_id {
            Some(user) => (self.by_user.get(&user).into_iter().flatten().copied()).collect(),
            None => (self.sockets.iter())
                .filter(|(_, socket)| notice.is_for(socket.user, socket.hears_new_bookings))
                .map(|(id, _)| *id)
                .collect(),
        };
        for id in ids {
            let Some(socket) = self.sockets.get(&id) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) =
                socket.outgoing.try_send(notice.frame.clone())
            {
                self.kick(id);
            }
        }
    }

    /// Sends `frame` about `user` to the sockets of everyone else in any of
    /// `chats`: presence and typing go to the people who share a chat with
    /// their subject ([`domain::access::may_see_presence`]).
    fn share<'a>(&mut self, chats: impl Iterator<Item = &'a Uuid>, user: Uuid, frame: &Utf8Bytes) {
        let mut ids: Vec<u64> = chats
            .filter_map(|chat| self.by_chat.get(chat))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some(socket) = self.sockets.get(&id) else {
                continue;
            };
            if socket.user == user {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = socket.outgoing.try_send(frame.clone())
            {
                self.kick(id);
            }
        }
    }

    /// Whether the socket `id` belongs to `chat` now, as the log says up to
    /// the hub's position.
    fn member_of(&self, id: u64, chat: Uuid) -> bool {
        self.sockets
            .get(&id)
            .is_some_and(|socket| socket.chats.contains(&chat))
    }

    /// Cuts a socket off: it gets no more frames, and its task closes it.
    fn kick(&mut self, id: u64) {
        if let Some(kick) = self.sockets.get_mut(&id).and_then(|s| s.kick.take()) {
            let _ = kick.send(Kick::TooSlow);
        }
        self.detach(id);
    }
}

fn remove_from(index: &mut HashMap<Uuid, HashSet<u64>>, key: &Uuid, id: u64) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}
