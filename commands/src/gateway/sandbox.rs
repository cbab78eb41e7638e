//! The client side of the built-in `sandbox` provider: Herald talks to it over
//! HTTP exactly as it would to a real acquirer, so timeouts, retries and the
//! circuit breaker are exercised the same way. The provider side (its API, the
//! confirmation page and the notifications it sends) is served by the `api`
//! crate under `/sandbox`.

use std::time::Duration;

use domain::payment::ProviderCharge;
use domain::values::PaymentMethod;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    ChargeRequest, GatewayError, GatewayResult, NotificationMetadata, PaymentGateway,
    ProviderAmount, ProviderRefund, RefundRequest,
};

/// The header that makes a repeated provider request answer the first one's result.
pub const IDEMPOTENCE_KEY: &str = "Idempotence-Key";
/// The sandbox provider's API, under its base URL.
pub const CHARGES_PATH: &str = "/sandbox/api/payments";
/// Where refunds are asked for, under the base URL.
pub const REFUNDS_PATH: &str = "/sandbox/api/refunds";

/// How long opening a TCP connection to the provider may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most of a refusal's text kept for logs and errors.
const MAX_REFUSAL_TEXT: usize = 500;

/// Body of a request to open a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SandboxCharge)]
pub struct ChargeBody {
    /// What to charge.
    pub amount: ProviderAmount,
    /// `bank_card` or `sbp`.
    pub payment_method_type: String,
    /// Shown to the payer.
    pub description: String,
    /// Echoed in every notification about the charge.
    pub metadata: NotificationMetadata,
}

/// The provider's view of a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = SandboxChargeAnswer)]
pub struct ChargeAnswer {
    /// The provider's reference.
    pub id: String,
    /// `pending`, `succeeded` or `canceled`.
    pub status: String,
    /// Where the payer confirms it.
    pub confirmation_url: String,
}

/// Body of a request to return a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SandboxRefund)]
pub struct RefundBody {
    /// The provider's reference for the charge.
    pub payment_id: String,
    /// What to return: the whole charge.
    pub amount: ProviderAmount,
}

/// The provider's view of a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = SandboxRefundAnswer)]
pub struct RefundAnswer {
    /// The provider's reference.
    pub id: String,
    /// `pending` until it sends `refund.succeeded`.
    pub status: String,
}

/// How a shop proves to the provider that a request is its own, as real
/// acquirers ask: HTTP Basic authentication with the shop's id and secret key.
/// Without it, anyone could open charges whose notifications Herald would
/// receive signed.
#[derive(Clone)]
pub struct ShopCredentials {
    /// The shop's id at the provider.
    pub shop_id: String,
    /// The secret key the provider issued to the shop.
    pub secret_key: SecretString,
}

impl ShopCredentials {
    /// Fresh random credentials, for a sandbox that lives as long as the process.
    pub fn ephemeral() -> Self {
        Self {
            shop_id: format!("shop-{}", hex::encode(rand::random::<[u8; 4]>())),
            secret_key: SecretString::from(hex::encode(rand::random::<[u8; 24]>())),
        }
    }
}

impl std::fmt::Debug for ShopCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopCredentials")
            .field("shop_id", &self.shop_id)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// The provider's name for a payment method.
fn method_type(method: PaymentMethod) -> &'static str {
    match method {
        PaymentMethod::Card => "bank_card",
        PaymentMethod::Sbp => "sbp",
    }
}

/// Talks to a sandbox provider at a base URL (Herald's own public URL by
/// default). One call is one attempt; wrap it in
/// [`Resilient`](super::Resilient) for timeouts, retries and the breaker.
pub struct SandboxGateway {
    base_url: String,
    credentials: ShopCredentials,
    http: reqwest::Client,
}

impl SandboxGateway {
    /// A client of the provider API served at `base_url`, e.g.
    /// `http://127.0.0.1:8080`, signing in as the shop of `credentials`.
    pub fn new(base_url: &str, credentials: ShopCredentials) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            credentials,
            http,
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        idempotence_key: &str,
        body: &B,
    ) -> Result<T, GatewayError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .basic_auth(
                &self.credentials.shop_id,
                Some(self.credentials.secret_key.expose_secret()),
            )
            .header(IDEMPOTENCE_KEY, idempotence_key)
            .json(body)
            .send()
            .await
            .map_err(|err| GatewayError::Unavailable(err.into()))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|err| GatewayError::Unavailable(err.into()));
        }
        let text: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(MAX_REFUSAL_TEXT)
            .collect();
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(GatewayError::Unavailable(
                format!("the provider answered {status}: {text}").into(),
            ))
        } else {
            Err(GatewayError::Refused(format!("{status}: {text}")))
        }
    }
}

impl PaymentGateway for SandboxGateway {
    fn create_payment<'a>(
        &'a self,
        request: &'a ChargeRequest,
    ) -> GatewayResult<'a, ProviderCharge> {
        Box::pin(async move {
            let body = ChargeBody {
                amount: ProviderAmount::from_money(&request.amount),
                payment_method_type: method_type(request.method).to_owned(),
                description: request.description.clone(),
                metadata: NotificationMetadata {
                    payment_id: request.payment_id.to_string(),
                },
            };
            let answer: ChargeAnswer = self
                .post(CHARGES_PATH, &request.idempotence_key, &body)
                .await?;
            Ok(ProviderCharge {
                provider_payment_id: answer.id,
                confirmation_url: answer.confirmation_url,
            })
        })
    }

    fn request_refund<'a>(
        &'a self,
        request: &'a RefundRequest,
    ) -> GatewayResult<'a, ProviderRefund> {
        Box::pin(async move {
            let body = RefundBody {
                payment_id: request.provider_payment_id.clone(),
                amount: ProviderAmount::from_money(&request.amount),
            };
            let answer: RefundAnswer = self
                .post(REFUNDS_PATH, &request.idempotence_key, &body)
                .await?;
            Ok(ProviderRefund {
                provider_refund_id: answer.id,
            })
        })
    }
}
