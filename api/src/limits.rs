//! Rate limits: token buckets per caller (the JWT subject) and per client
//! address, with their own buckets for the payment webhook and the operations
//! endpoints. A refused request gets 429 with `Retry-After`; every answer
//! carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::auth::JwtKeys;
use crate::error::ApiError;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// Forgotten buckets are swept once every this many requests.
const SWEEP_EVERY: u64 = 10_000;

/// Token bucket sizes; every one is also a `herald up` flag.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Sustained requests per second allowed to one caller and to one address;
    /// 0 turns rate limiting off.
    #[arg(long, env = "HERALD_RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,
    /// Requests one caller or address may send at once above the sustained rate.
    #[arg(long, env = "HERALD_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// Sustained webhook notifications per second from one address.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_RATE_LIMIT_PER_SECOND",
        default_value_t = 20
    )]
    pub webhook_rate_limit_per_second: u32,
    /// Sustained health and metrics requests per second from one address.
    #[arg(long, env = "HERALD_OPS_RATE_LIMIT_PER_SECOND", default_value_t = 20)]
    pub ops_rate_limit_per_second: u32,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            webhook_rate_limit_per_second: 20,
            ops_rate_limit_per_second: 20,
        }
    }
}

/// The buckets of one Herald process.
pub struct RateLimits {
    subjects: Keyed<Uuid>,
    addresses: Keyed<IpAddr>,
    webhooks: Keyed<IpAddr>,
    ops: Keyed<IpAddr>,
    keys: JwtKeys,
    seen: AtomicU64,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
}

impl RateLimits {
    /// Buckets sized by `args`, or none when the API rate is 0 (limits off);
    /// `keys` recognise a caller's subject.
    pub fn new(args: &LimitArgs, keys: JwtKeys) -> Option<Self> {
        if args.rate_limit_per_second == 0 {
            return None;
        }
        let api = quota(args.rate_limit_per_second, args.rate_limit_burst);
        Some(Self {
            subjects: RateLimiter::keyed(api).with_middleware(),
            addresses: RateLimiter::keyed(api).with_middleware(),
            webhooks: RateLimiter::keyed(quota(
                args.webhook_rate_limit_per_second,
                args.webhook_rate_limit_per_second * 2,
            ))
            .with_middleware(),
            ops: RateLimiter::keyed(quota(
                args.ops_rate_limit_per_second,
                args.ops_rate_limit_per_second * 2,
            ))
            .with_middleware(),
            keys,
            seen: AtomicU64::new(0),
        })
    }

    fn sweep_now_and_then(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for limiter in [&self.addresses, &self.webhooks, &self.ops] {
                limiter.retain_recent();
            }
            self.subjects.retain_recent();
        }
    }
}

/// What one bucket said.
struct Verdict {
    limit: u32,
    remaining: u32,
    /// How long until the caller may send again, when refused.
    retry_after: Option<Duration>,
}

fn check<K: Clone + std::hash::Hash + Eq>(limiter: &Keyed<K>, key: &K) -> Verdict {
    match limiter.check_key(key) {
        Ok(snapshot) => Verdict {
            limit: snapshot.quota().burst_size().get(),
            remaining: snapshot.remaining_burst_capacity(),
            retry_after: None,
        },
        Err(not_until) => Verdict {
            limit: not_until.quota().burst_size().get(),
            remaining: 0,
            retry_after: Some(not_until.wait_time_from(DefaultClock::default().now())),
        },
    }
}

impl RateLimits {
    /// Charges one command to `user`'s bucket, the one their requests spend:
    /// for commands that arrive other than as requests, such as live frames.
    pub fn spend(&self, user: Uuid) -> Result<(), ApiError> {
        match check(&self.subjects, &user).retry_after {
            None => Ok(()),
            Some(retry_after) => Err(ApiError::RateLimited { retry_after }),
        }
    }
}

/// Middleware: charges the request to its buckets and refuses it when one is empty.
/// The address a request came from (loopback when the server did not say).
pub fn caller_address(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |info| info.0.ip())
}

pub async fn enforce(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    limits.sweep_now_and_then();
    let address = caller_address(request.extensions());
    let path = request.uri().path();
    let verdict = if path.starts_with("/webhooks/") {
        check(&limits.webhooks, &address)
    } else if path.starts_with("/health/") || path == "/metrics" {
        check(&limits.ops, &address)
    } else {
        let by_address = check(&limits.addresses, &address);
        let subject = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .get(7..)
                    .filter(|_| value[..7].eq_ignore_ascii_case("bearer "))
            })
            .and_then(|token| limits.keys.verify(token.trim()).ok());
        match subject {
            Some(actor) => {
                let by_subject = check(&limits.subjects, &actor.user_id);
                if by_address.retry_after.is_some() {
                    by_address
                } else {
                    by_subject
                }
            }
            None => by_address,
        }
    };
    let mut response = match verdict.retry_after {
        Some(wait) => ApiError::RateLimited { retry_after: wait }.into_response(),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    let reset = verdict.retry_after.map_or(0, |wait| wait.as_secs() + 1);
    for (name, value) in [
        ("ratelimit-limit", verdict.limit as u64),
        ("ratelimit-remaining", verdict.remaining as u64),
        ("ratelimit-reset", reset),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    response
}
