//! Timeouts, retries with backoff and a circuit breaker around any gateway, so
//! that a slow or dead provider costs a request a bounded time and, once it is
//! known to be dead, almost none.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain::payment::ProviderCharge;
use futures::future::BoxFuture;
use rand::Rng;
use tokio::time::Instant;

use super::{
    ChargeRequest, GatewayError, GatewayResult, PaymentGateway, ProviderRefund, RefundRequest,
};

/// How hard to try a provider before giving up on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resilience {
    /// Longest one attempt may take.
    pub attempt_timeout: Duration,
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// Pause before the second attempt; it doubles after each further one.
    pub first_backoff: Duration,
    /// Failed attempts in a row after which calls are refused at once.
    pub failure_threshold: u32,
    /// How long calls are refused before one trial call is let through.
    pub open_for: Duration,
}

impl Default for Resilience {
    /// At most about 16 s per call (3 × 5 s plus pauses), which a client's
    /// request can wait; after 5 failed attempts in a row, 30 s of fast refusals.
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            attempts: 3,
            first_backoff: Duration::from_millis(200),
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The breaker's memory of recent attempts.
#[derive(Debug, Default)]
struct Breaker {
    /// Failed attempts since the last success.
    failures: u32,
    /// While set and in the future, calls are refused. Once it passes, one
    /// call is let through as a trial and the deadline moves on, so a trial
    /// that never finishes cannot keep the breaker half-open forever.
    open_until: Option<Instant>,
}

/// A gateway whose calls are bounded, retried and guarded by a circuit breaker.
pub struct Resilient {
    inner: Arc<dyn PaymentGateway>,
    policy: Resilience,
    breaker: Mutex<Breaker>,
}

impl Resilient {
    /// Guards `inner` with `policy`.
    pub fn new(inner: Arc<dyn PaymentGateway>, policy: Resilience) -> Self {
        Self {
            inner,
            policy,
            breaker: Mutex::new(Breaker::default()),
        }
    }

    /// Whether calls are being refused right now.
    pub fn is_open(&self) -> bool {
        self.with_breaker(|b| b.open_until.is_some_and(|until| Instant::now() < until))
    }

    fn with_breaker<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        // The breaker's state stays consistent even if a holder panicked.
        f(&mut self.breaker.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Lets an attempt through, or refuses it while the circuit is open.
    fn admit(&self) -> Result<(), GatewayError> {
        let open_for = self.policy.open_for;
        self.with_breaker(|b| match b.open_until {
            Some(until) if Instant::now() < until => Err(GatewayError::CircuitOpen),
            Some(_) => {
                b.open_until = Some(Instant::now() + open_for);
                Ok(())
            }
            None => Ok(()),
        })
    }

    fn record(&self, healthy: bool) {
        let policy = &self.policy;
        self.with_breaker(|b| {
            if healthy {
                *b = Breaker::default();
                return;
            }
            b.failures = b.failures.saturating_add(1);
            if b.failures >= policy.failure_threshold {
                if b.open_until.is_none() {
                    tracing::warn!(
                        failures = b.failures,
                        "payment provider keeps failing; pausing calls to it"
                    );
                }
                b.open_until = Some(Instant::now() + policy.open_for);
            }
        });
    }

    async fn call<'a, T>(
        &'a self,
        attempt: impl Fn() -> BoxFuture<'a, Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let mut backoff = self.policy.first_backoff;
        let mut attempt_number = 1;
        loop {
            self.admit()?;
            let outcome = match tokio::time::timeout(self.policy.attempt_timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(GatewayError::Unavailable(
                    "the provider did not answer in time".into(),
                )),
            };
            // A refusal is an answer: the provider is alive.
            self.record(outcome.as_ref().err().is_none_or(|err| !err.is_transient()));
            match outcome {
                Err(err) if err.is_transient() && attempt_number < self.policy.attempts => {
                    tracing::debug!(%err, attempt_number, "payment provider call failed; retrying");
                }
                outcome => return outcome,
            }
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 4);
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = backoff.saturating_mul(2);
            attempt_number += 1;
        }
    }
}

impl PaymentGateway for Resilient {
    fn create_payment<'a>(
        &'a self,
        request: &'a ChargeRequest,
    ) -> GatewayResult<'a, ProviderCharge> {
        Box::pin(self.call(move || self.inner.create_payment(request)))
    }

    fn request_refund<'a>(
        &'a self,
        request: &'a RefundRequest,
    ) -> GatewayResult<'a, ProviderRefund> {
        Box::pin(self.call(move || self.inner.request_refund(request)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use domain::values::{Currency, Money, PaymentMethod};
    use uuid::Uuid;

    use super::*;

    /// A provider that fails its first `failing` calls, then answers.
    struct Flaky {
        failing: u32,
        calls: AtomicU32,
        hang: bool,
    }

    impl PaymentGateway for Flaky {
        fn create_payment<'a>(&'a self, _: &'a ChargeRequest) -> GatewayResult<'a, ProviderCharge> {
            Box::pin(async move {
                let call = self.calls.fetch_add(1, Ordering::SeqCst);
                if call < self.failing {
                    if self.hang {
                        std::future::pending::<()>().await;
                    }
                    return Err(GatewayError::Unavailable("down".into()));
                }
                Ok(ProviderCharge {
                    provider_payment_id: format!("p{call}"),
                    confirmation_url: "https://pay.example".to_owned(),
                })
            })
        }

        fn request_refund<'a>(&'a self, _: &'a RefundRequest) -> GatewayResult<'a, ProviderRefund> {
            Box::pin(async { Err(GatewayError::Refused("no refunds here".to_owned())) })
        }
    }

    fn flaky(failing: u32, hang: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            failing,
            calls: AtomicU32::new(0),
            hang,
        })
    }

    fn charge() -> ChargeRequest {
        ChargeRequest {
            idempotence_key: "k".to_owned(),
            payment_id: Uuid::nil(),
            amount: Money::new(100, Currency::rub()).unwrap(),
            method: PaymentMethod::Card,
            description: "visit".to_owned(),
        }
    }

    fn policy() -> Resilience {
        Resilience {
            attempt_timeout: Duration::from_secs(1),
            attempts: 3,
            first_backoff: Duration::from_millis(100),
            failure_threshold: 4,
            open_for: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_retried_until_the_provider_answers() {
        let provider = flaky(2, false);
        let gateway = Resilient::new(provider.clone(), policy());
        let charge = gateway.create_payment(&charge()).await.unwrap();
        assert_eq!(charge.provider_payment_id, "p2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_provider_costs_each_attempt_its_timeout_then_the_circuit_opens() {
        let provider = flaky(u32::MAX, true);
        let gateway = Resilient::new(provider.clone(), policy());
        let started = Instant::now();
        let err = gateway.create_payment(&charge()).await.unwrap_err();
        assert!(matches!(err, GatewayError::Unavailable(_)), "{err}");
        // Three timeouts and two pauses, nothing more.
        assert!(
            started.elapsed() < Duration::from_millis(3500),
            "{:?}",
            started.elapsed()
        );
        assert!(!gateway.is_open());

        let err = gateway.create_payment(&charge()).await.unwrap_err();
        assert!(matches!(err, GatewayError::CircuitOpen), "{err}");
        assert!(gateway.is_open());
        assert_eq!(provider.calls.load(Ordering::SeqCst), 4);

        let refused_at = Instant::now();
        let err = gateway.create_payment(&charge()).await.unwrap_err();
        assert!(matches!(err, GatewayError::CircuitOpen), "{err}");
        assert_eq!(refused_at.elapsed(), Duration::ZERO);
        assert_eq!(provider.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_pause_one_trial_call_closes_the_circuit_when_it_succeeds() {
        let provider = flaky(4, false);
        let gateway = Resilient::new(provider.clone(), policy());
        let _ = gateway.create_payment(&charge()).await;
        let _ = gateway.create_payment(&charge()).await;
        assert!(gateway.is_open());

        tokio::time::advance(Duration::from_secs(11)).await;
        let charge = gateway.create_payment(&charge()).await.unwrap();
        assert_eq!(charge.provider_payment_id, "p4");
        assert!(!gateway.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried_and_does_not_count_against_the_provider() {
        let provider = flaky(0, false);
        let gateway = Resilient::new(provider, policy());
        let refund = RefundRequest {
            idempotence_key: "k".to_owned(),
            payment_id: Uuid::nil(),
            provider_payment_id: "p".to_owned(),
            amount: Money::new(100, Currency::rub()).unwrap(),
        };
        for _ in 0..10 {
            let err = gateway.request_refund(&refund).await.unwrap_err();
            assert!(matches!(err, GatewayError::Refused(_)), "{err}");
        }
        assert!(!gateway.is_open());
    }
}
