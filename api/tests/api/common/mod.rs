//! Starts a real Herald on port 0 against a fresh Postgres database of its own.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub mod pg_proxy;
use herald_nats::follower::Source;
use herald_nats::testing as support;

pub use support::{
    assert_complete_and_ordered, fresh_database, nats_url, stream_entries, Leftovers,
};

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::auth::JwtKeys;
use api::background::Background;
use api::config::DatabaseArgs;
use api::deliveries::Worker;
use api::email::{Email, EmailConfig};
use api::hooks::Webhooks;
use api::limits::LimitArgs;
use api::live::{LiveConfig, LiveHub};
use api::provider::sandbox::Redelivery;
use api::provider::webhook::WebhookSecret;
use api::provider::PaymentProvider;
use api::server::ConnectionArgs;
use api::startup::{Application, Parts, Settings};
use chrono::{DateTime, Utc};
use commands::gateway::{PaymentGateway, ShopCredentials};
use commands::WriteSide;
use domain::values::{Actor, Role};
use herald_nats::Topology;
use projections::Projection;
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The secret the test servers sign tokens with.
pub const JWT_SECRET: &str = "tttttttttttttttttttttttttttttttt";

/// The secret the test servers' payment provider signs notifications with.
pub const WEBHOOK_SECRET: &str = "wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww";

/// The shop the test servers' sandbox provider serves.
pub fn shop() -> ShopCredentials {
    ShopCredentials {
        shop_id: "test-shop".to_owned(),
        secret_key: SecretString::from("ssssssssssssssssssssssssssssssss"),
    }
}

/// A running Herald and what a test needs to talk to it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// A pool on the test's own database, for looking at the event store.
    pub pool: PgPool,
    pub keys: JwtKeys,
    pub write: Arc<WriteSide>,
    pub database_url: String,
    /// The stream names of this test's deployment.
    pub topology: Topology,
    shutdown: Option<oneshot::Sender<()>>,
    /// The HTTP server's task; it ends once shut down and drained.
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Relay and projection workers, when the test runs the read side.
    background: Option<Background>,
    /// The payment provider Herald calls.
    pub gateway: Arc<dyn PaymentGateway>,
    /// What the provider signs its notifications with.
    pub webhook_secret: WebhookSecret,
    /// The payment process manager, when the test runs it.
    process: Option<Background>,
    /// The e-mail worker, when the test runs it.
    mailer: Option<Background>,
    /// The live gateway's hub, when the test runs one.
    pub live: Option<Arc<LiveHub>>,
    /// How people are notified.
    pub notify: Arc<api::notify::NotifyConfig>,
    /// Where attachments are stored.
    pub attachments: Arc<api::attachments::Attachments>,
    /// The directory of attachments this Herald made, removed when dropped.
    attachments_dir: Option<AttachmentsDir>,
    /// The database and stream this Herald made, dropped last.
    leftovers: support::Leftovers,
}

/// The secret the test servers sign attachment URLs with.
pub const ATTACHMENT_SECRET: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A directory of its own for one test's attachments, removed afterwards.
pub struct AttachmentsDir(pub std::path::PathBuf);

impl AttachmentsDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("herald-attachments-{}", Uuid::new_v4()));
        Self(dir)
    }
}

impl Drop for AttachmentsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a test's Herald differs from the default one: a fresh database, a
/// stream of its own, the local NATS, the sandbox provider, no rate limits
/// and no live gateway.
#[derive(Default)]
pub struct Options {
    /// Another database (say, through a proxy, or one shared with another instance).
    pub database_url: Option<String>,
    /// Another NATS server.
    pub nats_url: Option<String>,
    /// Another deployment's stream names (to share them with another instance).
    pub topology: Option<Topology>,
    /// Another payment provider than the sandbox Herald serves.
    pub gateway: Option<Arc<dyn PaymentGateway>>,
    /// Rate limits.
    pub limits: Option<LimitArgs>,
    /// The live gateway, tuned.
    pub live: Option<LiveConfig>,
    /// Another listener than a plain one on a free loopback port.
    pub listener: Option<tokio::net::TcpListener>,
    /// Other limits on connections than the defaults.
    pub connections: Option<ConnectionArgs>,
    /// Other notification settings than the defaults.
    pub notify: Option<api::notify::NotifyConfig>,
    /// Background parts run inside the application, as `herald up` runs
    /// them, rather than started by the test.
    pub parts: Option<Parts>,
    /// Another store of attachments than a directory of the test's own.
    pub attachments: Option<api::attachments::Attachments>,
}

impl TestApp {
    /// Herald's write side on its own fresh database.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// All of Herald, as `herald up` runs it: API, relay and every projection
    /// worker, on a fresh database and a stream of the test's own.
    pub async fn spawn_with_pipeline() -> Self {
        let mut app = Self::spawn().await;
        app.start_pipeline().await;
        app
    }

    /// Starts the relay and the projection workers (again, after a stop).
    pub async fn start_pipeline(&mut self) {
        support::delete_stale_streams().await;
        let client = herald_nats::connect(&nats_url()).await.unwrap();
        let mut background = Background::default();
        background.relay(&self.pool, &client, &self.topology);
        let source = Source::new(self.pool.clone(), client, self.topology.clone());
        background.workers(&source, &Projection::ALL);
        self.background = Some(background);
    }

    /// All of Herald with the payment process manager too, as `herald up` runs it.
    pub async fn spawn_with_payments() -> Self {
        let mut app = Self::spawn_with_pipeline().await;
        app.start_process_manager().await;
        app
    }

    /// Starts a payment process manager, the reminders of unread messages
    /// and the maker of thumbnails (again, after a stop).
    pub async fn start_process_manager(&mut self) {
        let client = herald_nats::connect(&nats_url()).await.unwrap();
        let mut process = Background::default();
        let source = Source::new(self.pool.clone(), client, self.topology.clone());
        process.process_manager(&self.write, &self.gateway, &source);
        let after = self.notify.unread_after;
        process.reminders(&self.write, &source, after);
        process.thumbnails(&self.write, &self.attachments.storage, &source);
        self.process = Some(process);
    }

    /// Stops the payment process manager, as a shutdown would.
    pub async fn stop_process_manager(&mut self) {
        if let Some(process) = self.process.take() {
            process.drain().await;
        }
    }

    /// Starts an e-mail worker sending through `email`, beside those already
    /// started. On the database's first start, notifications made before this
    /// returns are not e-mailed.
    pub async fn start_mailer(&mut self, email: EmailConfig) {
        let audience = self.notify.new_bookings_audience.clone();
        let email = Email::new(&email, audience).unwrap();
        let mailer = Worker::start(self.pool.clone(), email).await.unwrap();
        self.mailer
            .get_or_insert_with(Background::default)
            .deliveries(mailer);
    }

    /// Starts a worker of deliveries to webhooks, as configured in
    /// [`Options::notify`].
    pub async fn start_webhooks(&mut self) {
        let webhooks = Webhooks::new(&self.notify).unwrap();
        let worker = Worker::start(self.pool.clone(), webhooks).await.unwrap();
        self.mailer
            .get_or_insert_with(Background::default)
            .deliveries(worker);
    }

    /// Stops the e-mail workers, as a shutdown would: an e-mail being sent
    /// is finished first.
    pub async fn stop_mailer(&mut self) {
        if let Some(mailer) = self.mailer.take() {
            mailer.drain().await;
        }
    }

    /// Kills the e-mail workers, as a crash would: their tasks are dropped
    /// wherever they wait, so nothing after runs; their SMTP connections
    /// close and their transactions roll back.
    pub fn kill_mailer(&mut self) {
        drop(self.mailer.take());
    }

    /// Stops the relay and the projection workers, as a shutdown would.
    pub async fn stop_pipeline(&mut self) {
        if let Some(background) = self.background.take() {
            background.drain().await;
        }
    }

    /// Waits until every projection has applied every committed event, for up
    /// to a minute: a loaded two-core machine runs a debug build slowly.
    pub async fn wait_for_projections(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let committed = self.event_count().await;
            let sequenced = herald_nats::log::head(&self.pool).await.unwrap();
            let applied = projections::checkpoints(&self.pool, &Projection::ALL)
                .await
                .unwrap();
            if sequenced == committed as i64 && applied.iter().all(|&p| p == sequenced) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let committed = self.event_count().await;
        let sequenced = herald_nats::log::head(&self.pool).await.unwrap();
        let applied = projections::checkpoints(&self.pool, &Projection::ALL)
            .await
            .unwrap();
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        panic!(
            "the projections did not catch up with the log: {committed} committed, \
             {sequenced} sequenced, applied {applied:?}, {dead} dead letters"
        );
    }

    /// Herald on the given database URL (which may point through a proxy).
    pub async fn spawn_on(database_url: &str) -> Self {
        Self::spawn_with(Options {
            database_url: Some(database_url.to_owned()),
            ..Options::default()
        })
        .await
    }

    /// Herald on `database_url` calling `gateway`, or by default the sandbox
    /// provider it serves itself.
    pub async fn spawn_with_gateway(
        database_url: &str,
        gateway: Option<Arc<dyn PaymentGateway>>,
    ) -> Self {
        Self::spawn_with(Options {
            database_url: Some(database_url.to_owned()),
            gateway,
            ..Options::default()
        })
        .await
    }

    /// All of Herald with the live gateway (WebSocket and SSE) tuned by
    /// `config`, on a fresh database and a stream of the test's own.
    pub async fn spawn_live(config: LiveConfig) -> Self {
        let mut app = Self::spawn_with(Options {
            live: Some(config),
            ..Options::default()
        })
        .await;
        app.start_pipeline().await;
        app
    }

    /// [`TestApp::spawn_live`] whose server sockets have a send buffer of a few
    /// kilobytes instead of the kernel's self-tuned megabytes, so that a client
    /// that stops reading holds frames up within a few messages.
    pub async fn spawn_live_with_small_send_buffers(config: LiveConfig) -> Self {
        let mut app = Self::spawn_with(Options {
            live: Some(config),
            listener: Some(small_send_buffer_listener()),
            ..Options::default()
        })
        .await;
        app.start_pipeline().await;
        app
    }

    /// Another Herald instance (API and live hub, no relay or workers) on the
    /// database and stream of an existing one, as a second process behind a
    /// load balancer would be.
    pub async fn spawn_live_on(
        database_url: &str,
        topology: &Topology,
        config: LiveConfig,
    ) -> Self {
        Self::spawn_with(Options {
            database_url: Some(database_url.to_owned()),
            topology: Some(topology.clone()),
            live: Some(config),
            ..Options::default()
        })
        .await
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_page(&self) -> String {
        let page = self.client.get(format!("{}/metrics", self.address));
        page.send().await.unwrap().text().await.unwrap()
    }

    /// The WebSocket URL of this instance's live gateway, with `actor`'s token
    /// in the query string.
    pub fn ws_url(&self, actor: Actor) -> String {
        format!(
            "{}/api/v1/ws?token={}",
            self.address.replacen("http://", "ws://", 1),
            self.token(actor)
        )
    }

    /// Herald built by [`Application::build`], as `herald up` builds it, from
    /// the test's settings: the sandbox provider on the server's own address
    /// with quick redelivery, and no background parts (tests start and stop
    /// the pipeline and the process manager themselves).
    pub async fn spawn_with(options: Options) -> Self {
        // Herald's warnings and errors, printed with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_test_writer()
            .try_init();
        // What this Herald made for itself is removed once the test passes.
        let (database_url, own_database) = match options.database_url {
            Some(url) => (url, false),
            None => (fresh_database().await, true),
        };
        let (topology, own_topology) = match options.topology {
            Some(topology) => (topology, false),
            None => (support::unique_topology(), true),
        };
        let leftovers = support::Leftovers::new(
            own_database.then(|| database_url.clone()),
            own_topology.then(|| topology.clone()),
        );
        let listener = match options.listener {
            Some(listener) => listener,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let address = format!("http://{}", listener.local_addr().unwrap());
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET)).unwrap();
        let webhook_secret = WebhookSecret::new(SecretString::from(WEBHOOK_SECRET)).unwrap();
        let redelivery = Redelivery {
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            attempts: 60,
            timeout: Duration::from_secs(5),
        };
        let mut provider =
            PaymentProvider::sandbox(&address, &webhook_secret, shop(), redelivery).unwrap();
        if let Some(gateway) = options.gateway {
            provider.gateway = gateway;
        }
        let (attachments, attachments_dir) = match options.attachments {
            Some(attachments) => (attachments, None),
            None => {
                let dir = AttachmentsDir::new();
                let limits = domain::attachment::AttachmentLimits::default();
                let secret = SecretString::from(ATTACHMENT_SECRET);
                let local =
                    api::attachments::Attachments::local(&dir.0, &address, secret, limits).unwrap();
                (local, Some(dir))
            }
        };
        let application = Application::build(Settings {
            listener,
            pool: api::db::migrated_pool(&DatabaseArgs {
                database_url: database_url.clone(),
                database_pool_size: 8,
            })
            .await
            .unwrap(),
            nats_url: options.nats_url.unwrap_or_else(nats_url),
            topology: topology.clone(),
            keys,
            webhook_secret,
            provider,
            limits: options.limits,
            cors_origins: Vec::new(),
            live: options.live,
            connections: options.connections.unwrap_or_default(),
            notify: options.notify.unwrap_or_default(),
            email: None,
            attachments,
            parts: options.parts.unwrap_or(Parts::NONE),
        })
        .await
        .unwrap();
        let state = application.state().clone();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            client: reqwest::Client::new(),
            pool: state.write.pool().clone(),
            keys: state.keys.clone(),
            database_url,
            topology,
            write: state.write.clone(),
            shutdown: Some(shutdown),
            server: Some(server),
            background: None,
            gateway: state.gateway.clone(),
            webhook_secret: state.webhook_secret.clone(),
            process: None,
            mailer: None,
            live: state.live.clone(),
            notify: state.notify.clone(),
            attachments: state.attachments.clone(),
            attachments_dir,
            leftovers,
        }
    }

    /// Shuts the HTTP server down as a SIGTERM would, and waits until the
    /// requests in flight are answered.
    pub async fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// A bearer token for `actor`.
    pub fn token(&self, actor: Actor) -> String {
        self.keys.mint(actor, Duration::from_secs(3600))
    }

    /// Sends `method path` as `actor` with a JSON body (or none).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        actor: Actor,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(self.token(actor));
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, actor: Actor, body: Value) -> Reply {
        self.send(Method::POST, path, actor, Some(body)).await
    }

    /// `author` posts a message of `body` into `chat`; the answer, checked to
    /// be 201 Created.
    pub async fn message(&self, chat: Uuid, author: Actor, body: &str) -> Reply {
        let reply = self
            .post(
                &format!("/api/v1/chats/{chat}/messages"),
                author,
                serde_json::json!({ "body": body }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply
    }

    /// Every committed event's identity.
    pub async fn event_ids(&self) -> Vec<i64> {
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY event_id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// How many events the log holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The provider's reference for the charge Herald opened for `payment`.
    pub async fn provider_charge(&self, payment: Uuid) -> String {
        sqlx::query_scalar(
            "SELECT payload #>> '{PaymentInitiated,provider_payment_id}' FROM events
              WHERE aggregate_type = 'Payment' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(payment.to_string())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// A request to `path` with no credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
    }

    /// `call` as `actor`, ready to send.
    pub fn request_as(&self, actor: Actor, call: &Call) -> RequestBuilder {
        let request = self
            .request(call.method.clone(), &call.path)
            .bearer_auth(self.token(actor));
        match &call.body {
            Some(body) => request.json(body),
            None => request,
        }
    }

    /// Sends `call` as `actor`.
    pub async fn call(&self, actor: Actor, call: &Call) -> Reply {
        Reply::send(self.request_as(actor, call)).await
    }

    /// Sends `call` as `actor` with a fresh `X-Request-Id` and checks that it is
    /// answered with `status`, that the id is echoed, and that every event the
    /// command stored carries the caller and the request in its metadata.
    pub async fn accepts(&self, actor: Actor, call: Call, status: StatusCode) -> Outcome {
        let before = self.last_event_id().await;
        let request_id = format!("test-{}", Uuid::new_v4());
        let request = self
            .request_as(actor, &call)
            .header("x-request-id", &request_id);
        let reply = Reply::send(request).await;
        assert_eq!(
            reply.status, status,
            "{} {}: {}",
            call.method, call.path, reply.body
        );
        assert_eq!(reply.headers["x-request-id"], request_id.as_str());
        assert!(reply.body["consistency"].is_string(), "{}", reply.body);
        let events = self.events_after(before).await;
        let last = events.last().unwrap_or_else(|| {
            panic!("{} {} stored no event", call.method, call.path);
        });
        assert_eq!(reply.body["version"], last.sequence, "{}", reply.body);
        for event in &events {
            event.assert_caused_by(actor, &request_id);
        }
        Outcome { reply, events }
    }

    /// Sends `call` as `actor` and checks that it is refused with an RFC 9457
    /// problem of `status` and stores nothing.
    pub async fn refuses(&self, actor: Actor, call: Call, status: StatusCode) -> Reply {
        self.refuses_request(self.request_as(actor, &call), status)
            .await
    }

    /// Sends `request` and checks that it is refused with an RFC 9457 problem of
    /// `status` and stores nothing.
    pub async fn refuses_request(&self, request: RequestBuilder, status: StatusCode) -> Reply {
        self.stores_nothing(async {
            let reply = Reply::send(request).await;
            reply.assert_problem(status);
            reply
        })
        .await
    }

    /// Runs `request` and checks that the event log did not grow.
    pub async fn stores_nothing<T>(&self, request: impl Future<Output = T>) -> T {
        let before = self.event_count().await;
        let outcome = request.await;
        assert_eq!(
            self.event_count().await,
            before,
            "the request must not store events"
        );
        outcome
    }

    /// The `event_id` of the newest event, 0 when the log is empty.
    pub async fn last_event_id(&self) -> i64 {
        sqlx::query_scalar("SELECT coalesce(max(event_id), 0) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The events stored after `event_id`, in insert order.
    pub async fn events_after(&self, event_id: i64) -> Vec<StoredEvent> {
        sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, payload, metadata, \
                    event_id, xid::text AS xid, recorded_at \
             FROM events WHERE event_id > $1 ORDER BY event_id",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// `actor` with an account of their own in their role, opened by Herald
    /// itself unless they have one, so that they may be assigned a visit or
    /// join a chat.
    pub async fn enroll(&self, actor: Actor) -> Actor {
        let email = format!("{}@herald.test", actor.user_id);
        let name = format!("Test {}", actor.role);
        let hash = api::passwords::NOT_SET.to_owned();
        self.write.enroll(actor, email, name, hash).await.unwrap();
        actor
    }

    /// A chat created by `creator` with `others`, each enrolled first, and
    /// its id.
    pub async fn group_chat(&self, creator: Actor, others: &[Actor]) -> Uuid {
        for other in others {
            self.enroll(*other).await;
        }
        let members: Vec<Uuid> = others.iter().map(|a| a.user_id).collect();
        let reply = self
            .post(
                "/api/v1/chats",
                creator,
                serde_json::json!({ "kind": "group", "title": "Care team", "members": members }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.id()
    }

    /// A booking requested by `patient`, and its id.
    pub async fn booking(&self, patient: Actor) -> Uuid {
        let reply = self
            .post(
                "/api/v1/bookings",
                patient,
                serde_json::json!({ "call_type": "urgent", "address": "Tverskaya 1, Moscow", "amount_minor": 150000 }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.id()
    }

    /// Four bookings of `patient`: assigned to `doctor` (who has an
    /// account), completed by them, cancelled unpaid, and only requested.
    pub async fn bookings_in_every_status(&self, patient: Actor, doctor: Actor) {
        for steps in [&["assign"][..], &["assign", "complete"], &["cancel"], &[]] {
            let booking = self.booking(patient).await;
            for step in steps {
                let (actor, body) = match *step {
                    "assign" => (admin(), serde_json::json!({ "doctor_id": doctor.user_id })),
                    "complete" => (doctor, serde_json::json!({})),
                    _ => (patient, serde_json::json!({ "reason": "not needed" })),
                };
                let reply = self
                    .post(&format!("/api/v1/bookings/{booking}/{step}"), actor, body)
                    .await;
                assert_eq!(reply.status, StatusCode::OK, "{step}: {}", reply.body);
            }
        }
    }
}

/// Stores an event no follower of chat messages can read, as if written by
/// a broken release: the chats projection and the reminders of unread
/// messages set it aside as a dead letter.
pub async fn poison_the_chats(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Chat', $1, 1, 'MessageSent', '1', '{\"MessageSent\": {\"garbage\": true}}', '{}')",
    )
    .bind(Uuid::new_v4().to_string())
    .execute(pool)
    .await
    .unwrap();
}

/// A loopback listener whose accepted sockets inherit a 4 KiB send buffer.
fn small_send_buffer_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(1024).unwrap()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A command to send: method, path and JSON body, if any.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

pub fn post(path: impl Into<String>, body: Value) -> Call {
    Call {
        method: Method::POST,
        path: path.into(),
        body: Some(body),
    }
}

pub fn patch(path: impl Into<String>, body: Value) -> Call {
    Call {
        method: Method::PATCH,
        path: path.into(),
        body: Some(body),
    }
}

pub fn delete(path: impl Into<String>) -> Call {
    Call {
        method: Method::DELETE,
        path: path.into(),
        body: None,
    }
}

/// An accepted command: the answer and the events it stored.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub events: Vec<StoredEvent>,
}

impl Outcome {
    /// The one event the command stored.
    pub fn event(&self) -> &StoredEvent {
        assert_eq!(self.events.len(), 1, "{:?}", self.events);
        &self.events[0]
    }
}

/// One row of the event log.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub payload: Value,
    pub metadata: Value,
    pub event_id: i64,
    pub xid: String,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// A field of the event's payload.
    pub fn field(&self, name: &str) -> &Value {
        &self.payload[&self.event_type][name]
    }

    /// Checks that the event records `actor` and the request `request_id` as its
    /// correlation and cause, and that the store filled in its own columns.
    pub fn assert_caused_by(&self, actor: Actor, request_id: &str) {
        let metadata = &self.metadata;
        assert_eq!(metadata["actor"], actor.user_id.to_string(), "{metadata}");
        assert_eq!(metadata["role"], actor.role.as_str(), "{metadata}");
        assert_eq!(metadata["correlation_id"], request_id, "{metadata}");
        assert_eq!(metadata["causation_id"], request_id, "{metadata}");
        assert!(self.event_id > 0);
        assert!(self.xid.parse::<u64>().unwrap() > 0, "xid {}", self.xid);
        let age = Utc::now() - self.recorded_at;
        assert!(
            age.num_seconds().abs() < 60,
            "recorded_at {}",
            self.recorded_at
        );
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn send(request: RequestBuilder) -> Self {
        Self::from(request.send().await.unwrap()).await
    }

    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Self {
            status,
            headers,
            body,
        }
    }

    /// The `id` of an accepted command's answer.
    pub fn id(&self) -> Uuid {
        self.body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Asserts an RFC 9457 problem document with `status`.
    pub fn assert_problem(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.headers[reqwest::header::CONTENT_TYPE],
            "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.body);
        for member in ["type", "title", "detail"] {
            assert!(self.body[member].is_string(), "{}", self.body);
        }
        self
    }

    /// Asserts a 422 problem that names exactly `field`.
    pub fn assert_names(&self, field: &str) -> &Self {
        self.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(self.invalid_fields(), [field], "{}", self.body);
        self
    }

    /// The fields a 422 problem names.
    pub fn invalid_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn patient() -> Actor {
    Actor::new(Uuid::new_v4(), Role::Patient)
}
pub fn doctor() -> Actor {
    Actor::new(Uuid::new_v4(), Role::Doctor)
}
/// Runs the `herald` binary against `database_url`, its output kept.
pub fn herald_on(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

pub fn admin() -> Actor {
    Actor::new(Uuid::new_v4(), Role::Admin)
}
pub fn auditor() -> Actor {
    Actor::new(Uuid::new_v4(), Role::Auditor)
}

/// Asserts that every read model of `projection` holds exactly the rows that a
/// fresh rebuild from the log up to the live checkpoint gives.
pub async fn assert_matches_rebuild(pool: &PgPool, projection: projections::Projection) {
    let up_to = projections::checkpoint(pool, projection).await.unwrap();
    let schema = format!("rebuild_{}", projection.name());
    projections::rebuild_into(pool, projection, &schema, up_to)
        .await
        .unwrap();
    for table in projection.tables() {
        let differing: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (
                (SELECT * FROM public.{table} EXCEPT ALL SELECT * FROM {schema}.{table})
                UNION ALL
                (SELECT * FROM {schema}.{table} EXCEPT ALL SELECT * FROM public.{table})
             ) AS differences"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(differing, 0, "{table} differs from a rebuild from the log");
    }
}

/// A demo user as `herald up --dev` prints it.
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub role: String,
    pub email: String,
    pub sub: String,
    pub token: String,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `herald up --dev`, killed when dropped.
pub struct DevHerald {
    child: Child,
    pub base: String,
    /// The demo users' `(role, sub, token)`, as printed.
    pub users: Vec<DemoUser>,
    /// What the demo users sign in with, as printed.
    pub password: String,
}

impl DevHerald {
    /// Starts `herald up --dev` on `database` without configured secrets and
    /// waits for its greeting.
    pub fn start(database: &str, prefix: &str) -> Self {
        Self::spawn(database, prefix, None, &[])
    }

    /// [`DevHerald::start`], logging everything down to debug into `logs`.
    pub fn start_logging_to(database: &str, prefix: &str, logs: &std::path::Path) -> Self {
        Self::spawn(database, prefix, Some(logs), &[])
    }

    /// [`DevHerald::start`] with these environment variables set as well.
    pub fn start_with(database: &str, prefix: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(database, prefix, None, env)
    }

    fn spawn(
        database: &str,
        prefix: &str,
        logs: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        match logs {
            Some(path) => command
                .env("RUST_LOG", "debug")
                .stderr(std::fs::File::create(path).unwrap()),
            None => command.env("RUST_LOG", "warn"),
        };
        let mut child = command
            .args(["up", "--dev"])
            .env("HERALD_DATABASE_URL", database)
            .env("HERALD_LISTEN", &address)
            .env("HERALD_NATS_PREFIX", prefix)
            .env_remove("HERALD_JWT_SECRET")
            .env_remove("HERALD_WEBHOOK_SECRET")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut users = Vec::new();
        let mut password = String::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line.contains("mint more") {
                break;
            }
            if let Some((_, rest)) = line.split_once("with the password ") {
                password = rest.split(';').next().unwrap().to_owned();
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [role, email, sub, token] = words[..] {
                if let (Some(sub), Some(token)) =
                    (sub.strip_prefix("sub="), token.strip_prefix("token="))
                {
                    users.push(DemoUser {
                        role: role.to_owned(),
                        email: email.to_owned(),
                        sub: sub.to_owned(),
                        token: token.to_owned(),
                    });
                }
            }
        }
        Self {
            child,
            base: format!("http://{address}/api/v1"),
            users,
            password,
        }
    }

    /// Asks Herald to shut down, as a service manager does (SIGTERM), and
    /// waits until it has exited.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let asked = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(asked.success());
        self.child.wait().unwrap()
    }

    /// The status of the caller's bookings read with `token`.
    pub async fn read_with(&self, token: &str) -> StatusCode {
        reqwest::Client::new()
            .get(format!("{}/bookings", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }
}

impl Drop for DevHerald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server (`s3s-fs`) on a free loopback port, storing in a
/// directory of its own, with one bucket; stopped and removed when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    _dir: AttachmentsDir,
}

/// The credentials the test S3 server accepts.
pub const S3_ACCESS_KEY: &str = "herald-test";
pub const S3_SECRET_KEY: &str = "herald-test-secret";

impl S3Server {
    pub async fn start() -> Self {
        let dir = AttachmentsDir::new();
        let bucket = "herald".to_owned();
        std::fs::create_dir_all(dir.0.join(&bucket)).unwrap();
        let port = free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "s3s-fs is installed (cargo install s3s-fs --version 0.14.1 --features binary)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket,
            _dir: dir,
        }
    }

    /// Herald's attachments kept in this server's bucket.
    pub fn attachments(&self) -> api::attachments::Attachments {
        let args = api::attachments::AttachmentArgs {
            object_store_url: Some(format!("s3://{}", self.bucket).parse().unwrap()),
            attachments_dir: "unused".into(),
            s3_endpoint: Some(self.endpoint.parse().unwrap()),
            s3_region: "us-east-1".to_owned(),
            s3_access_key_id: Some(S3_ACCESS_KEY.to_owned()),
            s3_secret_access_key: Some(SecretString::from(S3_SECRET_KEY)),
            attachment_secret: None,
            attachment_max_size: domain::attachment::DEFAULT_MAX_SIZE,
            attachment_types: domain::attachment::DEFAULT_CONTENT_TYPES
                .iter()
                .map(|kind| (*kind).to_owned())
                .collect(),
            attachment_url_ttl: Duration::from_secs(600).into(),
            attachment_unused_ttl: Duration::from_secs(86_400).into(),
        };
        api::attachments::Attachments::from_args(&args, "http://unused", None).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
