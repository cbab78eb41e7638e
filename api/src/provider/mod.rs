//! The payment provider: which one Herald pays through, as the deployment
//! configures it; the built-in sandbox provider ([`sandbox`]); and the signed
//! notifications every provider sends back ([`webhook`]). Herald's side of the
//! provider's API is the gateway port in `commands::gateway`.
//!
//! A deployment names its acquirer's API (`HERALD_PROVIDER_URL`) and the shop
//! credentials it issued. The built-in sandbox provider is served only where it
//! is switched on, by `--dev` or `HERALD_SANDBOX`: then, unless told otherwise,
//! Herald pays through its own sandbox with credentials made for this process.

pub mod sandbox;
pub mod webhook;

use std::sync::Arc;

use commands::gateway::{PaymentGateway, Resilience, Resilient, SandboxGateway, ShopCredentials};

use crate::config::ProviderArgs;
use sandbox::{Redelivery, Sandbox};
use webhook::WebhookSecret;

/// The provider Herald calls, and the sandbox it serves, if any.
pub struct PaymentProvider {
    /// The provider's API, behind timeouts, retries and a circuit breaker.
    pub gateway: Arc<dyn PaymentGateway>,
    /// The built-in sandbox, when it is served.
    pub sandbox: Option<Arc<Sandbox>>,
}

/// Why no payment provider could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Neither a provider nor the sandbox was configured.
    #[error(
        "no payment provider is configured: set HERALD_PROVIDER_URL, HERALD_PROVIDER_SHOP_ID \
         and HERALD_PROVIDER_SECRET_KEY, or HERALD_SANDBOX=true to serve the built-in sandbox \
         provider (development and tests only: no real money moves)"
    )]
    Missing,
    /// Only one half of the shop's credentials was configured, or none for a
    /// provider that is not the built-in sandbox.
    #[error("HERALD_PROVIDER_SHOP_ID and HERALD_PROVIDER_SECRET_KEY must be set together")]
    Credentials,
    /// The HTTP client could not be built.
    #[error("cannot build the payment provider's HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl PaymentProvider {
    /// The provider `args` name. `dev` switches the sandbox on; `public_url`
    /// is where Herald (and so its sandbox) is reached; the sandbox signs its
    /// notifications with `webhook_secret`.
    pub fn from_config(
        args: &ProviderArgs,
        dev: bool,
        public_url: &str,
        webhook_secret: &WebhookSecret,
    ) -> Result<Self, ProviderError> {
        let serve_sandbox = args.sandbox || dev;
        let credentials = match (&args.provider_shop_id, &args.provider_secret_key) {
            (Some(shop_id), Some(secret_key)) => ShopCredentials {
                shop_id: shop_id.clone(),
                secret_key: secret_key.clone(),
            },
            (None, None) if serve_sandbox => ShopCredentials::ephemeral(),
            (None, None) if args.provider_url.is_none() => return Err(ProviderError::Missing),
            _ => return Err(ProviderError::Credentials),
        };
        if !serve_sandbox {
            let url = args.provider_url.as_ref().ok_or(ProviderError::Missing)?;
            return Self::external(url.as_str(), credentials);
        }
        let mut provider = Self::sandbox(
            public_url,
            webhook_secret,
            credentials.clone(),
            Redelivery::default(),
        )?;
        // A sandbox served by another instance, say.
        if let Some(url) = &args.provider_url {
            provider.gateway = Self::external(url.as_str(), credentials)?.gateway;
        }
        Ok(provider)
    }

    /// The provider whose API is at `base_url`, signed in as `shop`.
    fn external(base_url: &str, shop: ShopCredentials) -> Result<Self, ProviderError> {
        let client = SandboxGateway::new(base_url, shop)?;
        Ok(Self {
            gateway: Arc::new(Resilient::new(Arc::new(client), Resilience::default())),
            sandbox: None,
        })
    }

    /// The built-in sandbox served at `public_url` for `shop`, and Herald
    /// paying through it.
    pub fn sandbox(
        public_url: &str,
        webhook_secret: &WebhookSecret,
        shop: ShopCredentials,
        redelivery: Redelivery,
    ) -> Result<Self, ProviderError> {
        let sandbox = Sandbox::new(public_url, webhook_secret.clone(), shop.clone(), redelivery)?;
        Ok(Self {
            sandbox: Some(Arc::new(sandbox)),
            ..Self::external(public_url, shop)?
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn args() -> ProviderArgs {
        ProviderArgs {
            sandbox: false,
            provider_url: None,
            provider_shop_id: None,
            provider_secret_key: None,
        }
    }

    fn build(args: &ProviderArgs, dev: bool) -> Result<PaymentProvider, ProviderError> {
        let secret = WebhookSecret::new(SecretString::from("w".repeat(32))).unwrap();
        PaymentProvider::from_config(args, dev, "http://127.0.0.1:8080", &secret)
    }

    #[test]
    fn without_a_provider_or_the_sandbox_herald_does_not_start() {
        assert!(matches!(build(&args(), false), Err(ProviderError::Missing)));
    }

    #[test]
    fn the_sandbox_is_served_only_when_switched_on() {
        assert!(build(&args(), true).unwrap().sandbox.is_some());
        let switched_on = ProviderArgs {
            sandbox: true,
            ..args()
        };
        assert!(build(&switched_on, false).unwrap().sandbox.is_some());
        let real = ProviderArgs {
            provider_url: Some("https://acquirer.example/v3".parse().unwrap()),
            provider_shop_id: Some("shop-1".to_owned()),
            provider_secret_key: Some(SecretString::from("k".repeat(32))),
            ..args()
        };
        assert!(build(&real, false).unwrap().sandbox.is_none());
    }

    #[test]
    fn a_real_provider_needs_both_halves_of_the_shop_credentials() {
        let no_credentials = ProviderArgs {
            provider_url: Some("https://acquirer.example/v3".parse().unwrap()),
            ..args()
        };
        assert!(matches!(
            build(&no_credentials, false),
            Err(ProviderError::Credentials)
        ));
        let half = ProviderArgs {
            sandbox: true,
            provider_shop_id: Some("shop-1".to_owned()),
            ..args()
        };
        assert!(matches!(
            build(&half, true),
            Err(ProviderError::Credentials)
        ));
    }
}
