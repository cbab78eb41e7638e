//! Webhooks of notifications: URLs an admin registers per notification
//! kind, to which every notification of that kind is posted, signed like
//! the payment provider's notifications to Herald (`X-Herald-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`) with a secret
//! of the webhook's own, shown once when it is registered.
//!
//! Unless the deployment allows them (`HERALD_WEBHOOK_PRIVATE_ADDRESSES`),
//! webhooks reach only public addresses: a URL naming a loopback, private,
//! link-local or otherwise internal address is refused when registered and
//! when posted to, and a host name is posted to only at the public addresses
//! it resolves to, so that no registration makes Herald call into its own
//! network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::values::NotificationKind;
use projections::notifications::{self, Fresh, NotificationRow};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::deliveries::{Channel, Due, Failure, Retry, Target};
use crate::notify::NotifyConfig;
use crate::provider::webhook::{WebhookSecret, WebhookSecretError};

/// A registered webhook as admins see it, with how its deliveries went.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Hook {
    /// Its id.
    pub id: Uuid,
    /// The kind of notification posted to it.
    #[schema(value_type = NotificationKind)]
    pub kind: String,
    /// Where they are posted.
    pub url: String,
    /// Who registered it.
    pub created_by: Uuid,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When a delivery was last tried.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status it answered; none when it did not answer.
    pub last_status: Option<i32>,
    /// What went wrong, when it did.
    pub last_error: Option<String>,
    /// Notifications delivered.
    pub delivered: i64,
    /// Notifications set aside after every attempt failed.
    pub failed: i64,
}

/// Columns of [`Hook`], from `notification_webhooks h`.
const HOOK: &str = "h.id, h.kind, h.url, h.created_by, h.created_at, h.last_attempt_at,
                    h.last_status, h.last_error,
                    (SELECT count(*) FROM notification_deliveries d
                      WHERE d.channel = 'webhook' AND d.target = h.id AND d.sent_at IS NOT NULL)
                        AS delivered,
                    (SELECT count(*) FROM notification_deliveries d
                      WHERE d.channel = 'webhook' AND d.target = h.id AND d.failed_at IS NOT NULL)
                        AS failed";

/// A new secret to sign a webhook's deliveries with.
fn new_secret() -> String {
    hex::encode(crate::sessions::secret_bytes())
}

/// Registers `url` for notifications of `kind`; returns the webhook and the
/// secret its deliveries will be signed with.
pub async fn register(
    pool: &PgPool,
    kind: NotificationKind,
    url: &url::Url,
    by: Uuid,
) -> Result<(Hook, String), sqlx::Error> {
    let secret = new_secret();
    let hook = sqlx::query_as(&format!(
        "WITH h AS (
             INSERT INTO notification_webhooks (id, kind, url, secret, created_by)
             VALUES ($1, $2, $3, $4, $5) RETURNING *
         )
         SELECT {HOOK} FROM h"
    ))
    .bind(Uuid::now_v7())
    .bind(kind.as_str())
    .bind(url.as_str())
    .bind(&secret)
    .bind(by)
    .fetch_one(pool)
    .await?;
    Ok((hook, secret))
}

/// Every registered webhook, oldest first.
pub async fn list<'c>(executor: impl PgExecutor<'c>) -> Result<Vec<Hook>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {HOOK} FROM notification_webhooks h ORDER BY h.created_at, h.id"
    ))
    .fetch_all(executor)
    .await
}

/// Removes a webhook; whether there was one.
pub async fn remove<'c>(executor: impl PgExecutor<'c>, id: Uuid) -> Result<bool, sqlx::Error> {
    let removed = sqlx::query("DELETE FROM notification_webhooks WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(removed.rows_affected() > 0)
}

/// The `X-Herald-Signature` of `body` posted at `now` to a webhook with
/// `secret`.
pub fn signature(secret: &str, body: &[u8], now: i64) -> Result<String, WebhookSecretError> {
    let secret = WebhookSecret::new(SecretString::from(secret.to_owned()))?;
    Ok(secret.sign(now, body))
}

/// What a webhook is posted: the notification, to whom it is (none for an
/// audience), and what it says, never more.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// The notification; its id seen twice means a repeat.
    #[serde(flatten)]
    pub notification: &'a NotificationRow,
    /// Whose it is; none for everyone in the audience of new bookings.
    pub user_id: Option<Uuid>,
    /// What happened, in one line.
    pub summary: &'static str,
}

/// Posts `payload` to `url`, signed with `secret`: `Ok` with the status of a
/// 2xx answer, else what went wrong, with the status if there was one.
async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    payload: &Payload<'_>,
) -> Result<u16, (Option<u16>, String)> {
    // A struct of strings, numbers and ids always serializes.
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let signature =
        signature(secret, &body, Utc::now().timestamp()).map_err(|err| (None, err.to_string()))?;
    let answer = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(crate::provider::webhook::SIGNATURE_HEADER, signature)
        .header("x-herald-notification", payload.notification.id.to_string())
        .body(body)
        .send()
        .await
        .map_err(|err| (None, format!("no answer: {err}")))?;
    let status = answer.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err((Some(status.as_u16()), format!("answered {status}")))
    }
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private, shared (carrier-grade NAT), link-local, unique-local,
/// unspecified, multicast, broadcast or for documentation, nor one of those
/// written as IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local())
            }
        },
    }
}

/// Why a webhook may not be posted to at `url` when only public addresses
/// are allowed: it names another address itself.
pub fn not_public(url: &url::Url) -> Option<String> {
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => {
            return Some("localhost is not a public address".to_owned())
        }
        url::Host::Domain(_) => return None,
    };
    (!is_public(ip)).then(|| format!("{ip} is not a public address"))
}

/// Resolves host names to their public addresses only.
struct PublicAddresses;

impl reqwest::dns::Resolve for PublicAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|address| is_public(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{} has no public address", name.as_str()).into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addresses)
        })
    }
}

/// The webhook channel of [`crate::deliveries`]: every notification is
/// posted to each webhook registered for its kind.
pub struct Webhooks {
    client: reqwest::Client,
    retry: Retry,
    /// Whether webhooks may be at addresses that are not public.
    private_addresses: bool,
}

impl Webhooks {
    /// Posts that give up after the configured timeout, retried as it says,
    /// to public addresses only unless it allows others.
    pub fn new(config: &NotifyConfig) -> Result<Self, reqwest::Error> {
        // A redirect would post the signed body somewhere no admin named.
        let mut client = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if !config.webhook_private_addresses {
            client = client.dns_resolver(Arc::new(PublicAddresses));
        }
        Ok(Self {
            client: client.build()?,
            retry: config.webhook_retry,
            private_addresses: config.webhook_private_addresses,
        })
    }
}

impl Channel for Webhooks {
    const NAME: &'static str = "webhook";

    fn retry(&self) -> &Retry {
        &self.retry
    }

    async fn targets(
        &self,
        conn: &mut PgConnection,
        fresh: &[Fresh],
    ) -> Result<Vec<Target>, sqlx::Error> {
        let kinds: Vec<&str> = fresh.iter().map(|f| f.notification.kind.as_str()).collect();
        let hooks: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, kind FROM notification_webhooks WHERE kind = ANY($1)")
                .bind(kinds)
                .fetch_all(&mut *conn)
                .await?;
        Ok(fresh
            .iter()
            .flat_map(|notification| {
                (hooks.iter())
                    .filter(|(_, kind)| *kind == notification.notification.kind)
                    .map(|(hook, _)| Target::of(notification, *hook))
            })
            .collect())
    }

    async fn deliver(
        &self,
        conn: &mut PgConnection,
        due: &Due,
    ) -> Result<Result<(), Failure>, sqlx::Error> {
        let hook: Option<(String, String)> =
            sqlx::query_as("SELECT url, secret FROM notification_webhooks WHERE id = $1")
                .bind(due.target)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((url, secret)) = hook else {
            return Ok(Err(Failure::Impossible(
                "the webhook was removed".to_owned(),
            )));
        };
        if !self.private_addresses {
            if let Some(refused) = url::Url::parse(&url).ok().as_ref().and_then(not_public) {
                return Ok(Err(Failure::Impossible(refused)));
            }
        }
        let Some(fresh) = notifications::by_id(&mut *conn, due.notification_id).await? else {
            return Ok(Err(Failure::Impossible(
                "the notification is not in the read model".to_owned(),
            )));
        };
        let summary = match fresh.notification.kind.parse::<NotificationKind>() {
            Ok(kind) => kind.summary(),
            Err(_) => {
                return Ok(Err(Failure::Impossible(format!(
                    "no webhook is posted for a {} notification",
                    fresh.notification.kind
                ))))
            }
        };
        let payload = Payload {
            notification: &fresh.notification,
            user_id: fresh.user_id,
            summary,
        };
        let posted = post(&self.client, &url, &secret, &payload).await;
        let (status, error) = match &posted {
            Ok(status) => (Some(*status), None),
            Err((status, error)) => (*status, Some(error.clone())),
        };
        sqlx::query(
            "UPDATE notification_webhooks
                SET last_attempt_at = clock_timestamp(), last_status = $2, last_error = $3
              WHERE id = $1",
        )
        .bind(due.target)
        .bind(status.map(i32::from))
        .bind(error)
        .execute(&mut *conn)
        .await?;
        Ok(posted
            .map(drop)
            .map_err(|(_, error)| Failure::Refused(error)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::str::FromStr;

    use reqwest::dns::Resolve;

    use super::*;

    #[test]
    fn only_addresses_on_the_public_internet_are_public() {
        for public in ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
    }

    #[test]
    fn a_url_naming_an_internal_address_or_localhost_is_not_public() {
        for refused in [
            "http://127.0.0.1:9/",
            "http://[fe80::1]/",
            "http://LOCALHOST/",
        ] {
            assert!(
                not_public(&url::Url::parse(refused).unwrap()).is_some(),
                "{refused}"
            );
        }
        for allowed in ["https://push.example/herald", "https://93.184.215.14/"] {
            assert_eq!(
                not_public(&url::Url::parse(allowed).unwrap()),
                None,
                "{allowed}"
            );
        }
    }

    #[tokio::test]
    async fn a_host_name_with_only_internal_addresses_resolves_to_none() {
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        assert!(PublicAddresses.resolve(name).await.is_err());
    }
}
