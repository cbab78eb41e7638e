//! Failed sign-ins, counted per account and per address, so that guessing
//! passwords is slow: past the limit within the window, sign-in answers 429
//! with `Retry-After` until the window ends, whether the password is right
//! or not. A successful sign-in clears its account's count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long failures are remembered.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures one account may have within the window.
const PER_ACCOUNT: u32 = 5;
/// Failures one address may have within the window, over every account.
const PER_ADDRESS: u32 = 20;
/// Keys kept before expired ones are swept out.
const SWEEP_AT: usize = 100_000;

/// Counts of recent failures, by key, with when each count began.
#[derive(Debug, Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<Key, (u32, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

impl SignInThrottle {
    /// How long until `email` may be tried again from `address`, if either
    /// has used up its failures.
    pub fn wait(&self, email: &str, address: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        [
            (Key::Account(email.trim().to_lowercase()), PER_ACCOUNT),
            (Key::Address(address), PER_ADDRESS),
        ]
        .into_iter()
        .filter_map(|(key, limit)| {
            let (count, since) = failures.get(&key)?;
            let left = WINDOW.checked_sub(now.duration_since(*since))?;
            (*count >= limit).then_some(left)
        })
        .max()
    }

    /// Counts a failed sign-in.
    pub fn failed(&self, email: &str, address: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() >= SWEEP_AT {
            failures.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
        }
        for key in [
            Key::Account(email.trim().to_lowercase()),
            Key::Address(address),
        ] {
            let entry = failures.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    /// Forgets an account's failures once it signed in.
    pub fn succeeded(&self, email: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&Key::Account(email.trim().to_lowercase()));
    }
}
