//! `herald up`: everything in one process.

use herald_nats::Topology;

use super::BoxError;
use crate::attachments::Attachments;
use crate::auth::JwtKeys;
use crate::config::UpArgs;
use crate::db::migrated_pool;
use crate::dev::DevIdentity;
use crate::email::EmailConfig;
use crate::live::LiveConfig;
use crate::notify::NotifyConfig;
use crate::provider::webhook::{WebhookSecret, WebhookSecretError};
use crate::provider::PaymentProvider;
use crate::startup::{Application, Parts, Settings};

/// Why `herald up` without `--dev` does not start without a JWT secret.
const MISSING_SECRET: &str = "HERALD_JWT_SECRET is required (at least 32 bytes; make one with \
     `openssl rand -hex 32`); use `herald up --dev` to run with one Herald makes up and keeps \
     in its database";

/// Where `herald up` takes its secrets from, decided before anything is
/// touched.
enum Secrets {
    /// Both from the environment, as outside development mode they must be.
    Configured {
        keys: JwtKeys,
        webhook: WebhookSecret,
    },
    /// Development mode: those configured, and for the others the ones kept
    /// in the database.
    Development {
        keys: Option<JwtKeys>,
        webhook: Option<WebhookSecret>,
    },
}

impl Secrets {
    /// The configured secrets, checked; outside `--dev` both are required.
    fn configured(args: &UpArgs) -> Result<Self, BoxError> {
        let keys = args
            .jwt_secret
            .as_ref()
            .map(|secret| JwtKeys::new(secret)?.accepting(&args.jwt_previous_secrets))
            .transpose()?;
        let webhook = args
            .webhook_secret
            .clone()
            .map(WebhookSecret::new)
            .transpose()?;
        if args.dev {
            return Ok(Self::Development { keys, webhook });
        }
        Ok(Self::Configured {
            keys: keys.ok_or(MISSING_SECRET)?,
            webhook: webhook.ok_or(WebhookSecretError::Missing)?,
        })
    }
}

/// Everything in one process: API, relay, every projection worker, the
/// payment process manager, the live gateway and, when configured, e-mail.
pub(super) async fn up(args: UpArgs) -> Result<(), BoxError> {
    let secrets = Secrets::configured(&args)?;
    // The schema is ready before the port opens; the port is bound before
    // the provider is set up, so that the default public URL names it.
    let pool = migrated_pool(&args.database).await?;
    let (keys, webhook_secret, signed_with, dev) = match secrets {
        Secrets::Configured { keys, webhook } => (keys, webhook, "HERALD_JWT_SECRET", None),
        Secrets::Development { keys, webhook } => {
            let dev = DevIdentity::load_or_create(&pool).await?;
            let (keys, signed_with) = match keys {
                Some(keys) => (keys, "HERALD_JWT_SECRET"),
                None => (
                    JwtKeys::new(&dev.jwt_secret)?,
                    "the development secret kept in the database",
                ),
            };
            let webhook = match webhook {
                Some(webhook) => webhook,
                None => WebhookSecret::new(dev.webhook_secret.clone())?,
            };
            (keys, webhook, signed_with, Some(dev))
        }
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|err| format!("cannot listen on {} (HERALD_LISTEN): {err}", args.listen))?;
    let address = listener.local_addr()?;
    let public_url = args
        .public_url
        .as_ref()
        .map_or_else(|| format!("http://{address}"), ToString::to_string);
    let provider =
        PaymentProvider::from_config(&args.provider, args.dev, &public_url, &webhook_secret)?;
    let email = EmailConfig::from_args(&args.email, &public_url)?;
    let jwt_secret = args
        .jwt_secret
        .clone()
        .or_else(|| dev.as_ref().map(|dev| dev.jwt_secret.clone()));
    let attachments = Attachments::from_args(&args.attachments, &public_url, jwt_secret)?;
    let greeting = dev.as_ref().map(|dev| dev.greeting(&keys, signed_with));
    let application = Application::build(Settings {
        listener,
        pool,
        nats_url: args.nats.nats_url,
        topology: Topology::new(&args.nats.nats_prefix),
        keys,
        webhook_secret,
        provider,
        limits: Some(args.limits),
        cors_origins: args.cors_origins,
        live: Some(LiveConfig {
            sockets_per_user: args.live_sockets_per_user,
            presence_ttl: args.presence_ttl,
            ..LiveConfig::default()
        }),
        connections: args.connections,
        notify: NotifyConfig {
            // A developer's webhook receiver runs on their own machine.
            webhook_private_addresses: args.notify.webhook_private_addresses || args.dev,
            ..(&args.notify).into()
        },
        email,
        attachments,
        parts: Parts::ALL,
    })
    .await?;
    if let Some(dev) = &dev {
        dev.open_accounts(&application.state().write).await?;
    }
    // Printed once Herald is sure to start, not above an error.
    if let Some(greeting) = greeting {
        println!("{greeting}");
    }
    tracing::info!(%address, public_url, "herald is listening");
    application
        .run_until_stopped(crate::shutdown_signal())
        .await?;
    Ok(())
}
