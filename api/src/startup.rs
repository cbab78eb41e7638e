//! Builds a running Herald from its settings: the one assembly that both
//! `herald up` and every integration test go through, so tests run exactly
//! what production runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderValue;
use commands::WriteSide;
use herald_nats::follower::Source;
use herald_nats::Topology;
use projections::Projection;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::attachments::Attachments;
use crate::auth::JwtKeys;
use crate::background::Background;
use crate::conditional::Pages;
use crate::deliveries::Worker;
use crate::email::{Email, EmailConfig};
use crate::hooks::Webhooks;
use crate::limits::{LimitArgs, RateLimits};
use crate::live::{LiveConfig, LiveHub};
use crate::notify::NotifyConfig;
use crate::provider::webhook::WebhookSecret;
use crate::provider::PaymentProvider;
use crate::server::{serve, ConnectionArgs};
use crate::{db, AppState, Shared, Surface};

/// Bytes of list answers kept in memory for their next reader
/// ([`Pages`]).
const KEPT_PAGES_BYTES: usize = 16 << 20;

/// A boxed startup failure; each names what to fix.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which background parts run beside the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The relay (active or standby).
    pub relay: bool,
    /// A worker for every projection.
    pub workers: bool,
    /// The booking ⇄ payment process manager (active or standby), the
    /// reminders of unread messages, the thumbnails of images, the
    /// deliveries of notifications to webhooks, and by e-mail when it is
    /// configured, and the deletion of uploads no message carried in time.
    pub process_manager: bool,
}

impl Parts {
    /// Everything, as `herald up` runs.
    pub const ALL: Self = Self {
        relay: true,
        workers: true,
        process_manager: true,
    };
    /// The HTTP server alone.
    pub const NONE: Self = Self {
        relay: false,
        workers: false,
        process_manager: false,
    };
}

/// Everything Herald is built from, already read and checked.
pub struct Settings {
    /// The listener the HTTP server accepts on; bound first, so that the
    /// payment provider can be told the actual port.
    pub listener: TcpListener,
    /// A pool on the migrated database ([`crate::db::migrated_pool`]); migrated
    /// before the listener is bound, so an open port means a ready schema.
    pub pool: PgPool,
    /// The NATS server.
    pub nats_url: String,
    /// The names of this deployment's stream and consumers.
    pub topology: Topology,
    /// Signs and checks callers' tokens.
    pub keys: JwtKeys,
    /// Checks the payment provider's notifications.
    pub webhook_secret: WebhookSecret,
    /// The payment provider, and the sandbox when it is served.
    pub provider: PaymentProvider,
    /// Token buckets; none means no rate limits.
    pub limits: Option<LimitArgs>,
    /// Browser origins allowed to call the API.
    pub cors_origins: Vec<HeaderValue>,
    /// The live gateway (WebSocket and SSE); none answers them 503.
    pub live: Option<LiveConfig>,
    /// How long a client may take to send a request, and how large its headers may be.
    pub connections: ConnectionArgs,
    /// How people are notified.
    pub notify: NotifyConfig,
    /// The SMTP server notifications are e-mailed through; none sends no
    /// e-mail.
    pub email: Option<EmailConfig>,
    /// Where attachments are stored, and their signed URLs.
    pub attachments: Attachments,
    /// The background parts to run.
    pub parts: Parts,
}

/// A built Herald, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    connections: ConnectionArgs,
    state: AppState,
    surface: Surface,
    background: Background,
}

impl Application {
    /// Connects to NATS, starts the configured background parts and
    /// assembles the HTTP surface.
    pub async fn build(settings: Settings) -> Result<Self, BoxError> {
        let pool = settings.pool;
        let write = Arc::new(WriteSide::new(pool.clone()));
        let client = herald_nats::connect(&settings.nats_url).await?;
        let topology = settings.topology;
        let parts = settings.parts;
        let mut background = Background::default();
        let relay = parts
            .relay
            .then(|| background.relay(&pool, &client, &topology));
        // The followers of the log share one consumer of the stream.
        let source = Source::new(pool.clone(), client.clone(), topology.clone());
        if parts.workers {
            background.workers(&source, &Projection::ALL);
        }
        let gateway = settings.provider.gateway;
        if parts.process_manager {
            background.process_manager(&write, &gateway, &source);
            let after = settings.notify.unread_after;
            background.reminders(&write, &source, after);
            let notify = &settings.notify;
            let webhooks = Webhooks::new(notify)?;
            background.deliveries(Worker::start(pool.clone(), webhooks).await?);
            if let Some(email) = settings.email {
                let email = Email::new(&email, notify.new_bookings_audience.clone())?;
                background.deliveries(Worker::start(pool.clone(), email).await?);
            }
        }
        let live = settings.live.map(|config| {
            let (hub, runner) =
                LiveHub::new(pool.clone(), client.clone(), topology.clone(), config);
            background.spawn(|stop| runner.run(stop));
            hub
        });
        let revocations = settings.keys.revocations().clone();
        revocations.reload(&pool).await?;
        let reloading = pool.clone();
        background.spawn(|stop| revocations.keep_reloading(reloading, stop));
        let limits = match &settings.limits {
            Some(args) => RateLimits::new(args, settings.keys.clone()).map(Arc::new),
            None => None,
        };
        let attachments = Arc::new(settings.attachments);
        if parts.process_manager {
            background.thumbnails(&write, &attachments.storage, &source);
            let sweeper = attachments.clone();
            let sweeping = pool.clone();
            let every = (attachments.unused_ttl / 4).clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(3600),
            );
            let expiring = write.clone();
            background.spawn(move |stop| sweeper.keep_sweeping(sweeping, expiring, every, stop));
        }
        let state = AppState::new(Shared {
            readers: Arc::new(db::Readers::new(
                &pool,
                pool.options().get_max_connections() as usize / 2,
            )),
            write,
            keys: settings.keys,
            gateway,
            webhook_secret: settings.webhook_secret,
            sandbox: settings.provider.sandbox,
            live,
            limits,
            sign_ins: Arc::default(),
            notify: Arc::new(settings.notify),
            pages: Arc::new(Pages::new(KEPT_PAGES_BYTES)),
            attachments,
        });
        let surface = Surface {
            nats: Some(client),
            relay,
            cors_origins: settings.cors_origins,
        };
        Ok(Self {
            listener: settings.listener,
            connections: settings.connections,
            state,
            surface,
            background,
        })
    }

    /// The address the server accepts on.
    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What every request handler shares.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes: live sockets and streams are closed
    /// first (a graceful shutdown waits for open responses, and an SSE stream
    /// never ends by itself), then the requests in flight are answered and the
    /// background parts drained.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let live = self.state.live.clone();
        let shutdown = async move {
            shutdown.await;
            if let Some(hub) = live {
                hub.close();
            }
        };
        let router = crate::router(self.state, self.surface);
        let served = serve(self.listener, router, &self.connections, shutdown).await;
        self.background.drain().await;
        served
    }
}
