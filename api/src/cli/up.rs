//! `herald up`: everything in one process.

use std::time::Duration;

use domain::values::{Actor, Role};
use secrecy::SecretString;
use uuid::Uuid;

use herald_nats::Topology;

use super::BoxError;
use crate::auth::JwtKeys;
use crate::config::UpArgs;
use crate::db::migrated_pool;
use crate::live::LiveConfig;
use crate::provider::webhook::WebhookSecret;
use crate::provider::PaymentProvider;
use crate::startup::{Application, Parts, Settings};

/// Everything in one process: API, relay, every projection worker, the
/// payment process manager and the live gateway.
pub(super) async fn up(args: UpArgs) -> Result<(), BoxError> {
    let (keys, dev_tokens) = jwt_keys(&args)?;
    let webhook_secret = WebhookSecret::from_config(args.webhook_secret.clone(), args.dev)?;
    // The schema is ready before the port opens; the port is bound before
    // the provider is set up, so that the default public URL names it.
    let pool = migrated_pool(&args.database).await?;
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
            ..LiveConfig::default()
        }),
        connections: args.connections,
        parts: Parts::ALL,
    })
    .await?;
    // Printed once Herald is sure to start, not above an error.
    if let Some(tokens) = dev_tokens {
        println!("{tokens}");
    }
    tracing::info!(%address, public_url, "herald is listening");
    application
        .run_until_stopped(crate::shutdown_signal())
        .await?;
    Ok(())
}

/// The configured signing keys, or in `--dev` mode without a secret,
/// ephemeral ones and a ready token for every role, to print once Herald runs.
fn jwt_keys(args: &UpArgs) -> Result<(JwtKeys, Option<String>), BoxError> {
    match (&args.jwt_secret, args.dev) {
        (Some(secret), _) => Ok((JwtKeys::new(secret)?, None)),
        (None, false) => Err(
            "HERALD_JWT_SECRET is required (at least 32 bytes; make one with \
                              `openssl rand -hex 32`); use `herald up --dev` to run with an \
                              ephemeral one"
                .into(),
        ),
        (None, true) => {
            let secret: [u8; 32] = rand::random();
            let keys = JwtKeys::new(&SecretString::from(hex::encode(secret)))?;
            let mut tokens = String::from(
                "development mode: an ephemeral JWT secret signs these tokens (valid 24h):",
            );
            for role in [Role::Patient, Role::Doctor, Role::Admin, Role::Auditor] {
                let actor = Actor::new(Uuid::new_v4(), role);
                let token = keys.mint(actor, Duration::from_secs(24 * 3600));
                tokens.push_str(&format!(
                    "\n  {:<8} sub={} token={token}",
                    role.as_str(),
                    actor.user_id
                ));
            }
            Ok((keys, Some(tokens)))
        }
    }
}
