//! The plain app's workloads. The mix: each client opens an account, then
//! deposits, withdraws and writes checks on it, and moves on to a new account
//! every [`COMMANDS_PER_ACCOUNT`] commands, so that the framework's aggregates
//! stay as short as Herald's bookings and snapshot-bounded chats. Opening:
//! every command opens a new account, as every new booking is a new aggregate
//! in Herald.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::driver::{Kind, Reply, Request, Worker};

/// Commands sent to one account before the client opens the next.
const COMMANDS_PER_ACCOUNT: u32 = 20;

/// One client of the plain app.
pub struct PlainWorker {
    base: String,
    per_account: u32,
    account: Uuid,
    sent: u32,
    rng: StdRng,
}

impl PlainWorker {
    /// A client of the app at `base` sending the mix.
    pub fn mix(base: &str, index: usize) -> Self {
        Self::new(base, index, COMMANDS_PER_ACCOUNT)
    }

    /// A client of the app at `base` that only opens accounts.
    pub fn open(base: &str, index: usize) -> Self {
        Self::new(base, index, 1)
    }

    fn new(base: &str, index: usize, per_account: u32) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            per_account,
            account: Uuid::new_v4(),
            sent: per_account,
            rng: StdRng::seed_from_u64(index as u64),
        }
    }
}

impl Worker for PlainWorker {
    fn next(&mut self) -> Request {
        if self.sent >= self.per_account {
            self.account = Uuid::new_v4();
            self.sent = 0;
        }
        let body = if self.sent == 0 {
            json!({ "OpenAccount": { "account_id": self.account } })
        } else if self.sent == 1 {
            json!({ "DepositMoney": { "amount": 1_000_000 } })
        } else {
            match self.rng.gen_range(0..10) {
                0..=5 => json!({ "DepositMoney": { "amount": 1_000 } }),
                6..=7 => json!({ "WithdrawMoney": { "amount": 500 } }),
                _ => {
                    json!({ "WriteCheck": { "check_number": format!("{}", self.sent), "amount": 700 } })
                }
            }
        };
        self.sent += 1;
        Request {
            method: Method::POST,
            url: format!("{}/account/{}", self.base, self.account),
            token: None,
            body: Some(body),
            kind: Kind::Command,
        }
    }

    fn answered(&mut self, _request: &Request, _reply: &Reply) -> &'static [&'static str] {
        &[]
    }
}
