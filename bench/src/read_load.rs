//! Reads as fast as they are answered: a fixed number of clients, each a
//! closed loop sending one GET after another, as `wrk` does. A poller holds
//! the `ETag` of its first answer and sends it back as `If-None-Match`, so
//! every later read is answered `304` while nothing changes. A sign-in is
//! driven the same way, as a POST of the same credentials.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use reqwest::{Client, StatusCode};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::stats::{self, Percentiles};

/// One GET, as every client sends it.
#[derive(Debug, Clone)]
pub struct Read {
    /// The full URL.
    pub url: String,
    /// The bearer token, if the endpoint needs one.
    pub token: Option<String>,
    /// The tag sent as `If-None-Match`, for a poller.
    pub etag: Option<String>,
    /// POSTed as JSON instead of a GET (a sign-in).
    pub body: Option<serde_json::Value>,
}

impl Read {
    fn send(&self, client: &Client) -> reqwest::RequestBuilder {
        let mut request = match &self.body {
            Some(body) => client.post(&self.url).json(body),
            None => client.get(&self.url),
        };
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        request
    }

    /// Waits (at most `limit`) until the read answers 200 with the same
    /// `ETag` twice in a row, as it does once the read models hold all the
    /// setup wrote; `poll` then keeps that tag to send back.
    pub async fn ready(
        mut self,
        client: &Client,
        poll: bool,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut last: Option<String> = None;
        loop {
            let response = self.send(client).send().await?;
            if response.status() == StatusCode::OK {
                let etag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                if etag.is_none() || etag == last {
                    if poll {
                        self.etag = Some(etag.context("the read answered no ETag to poll with")?);
                    }
                    return Ok(self);
                }
                last = etag;
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "{} did not settle in {limit:?}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What a run of reads measured.
#[derive(Debug, Serialize)]
pub struct ReadReport {
    /// Clients reading at once.
    pub concurrency: usize,
    /// Seconds the run took.
    pub elapsed_s: f64,
    /// Reads answered 200 or 304 per second.
    pub throughput: f64,
    /// Latency of those reads.
    pub latency: Percentiles,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Reads that got no answer.
    pub transport_errors: u64,
}

/// Sends `read` from `concurrency` clients for `duration`.
pub async fn run(
    client: &Client,
    read: Read,
    concurrency: usize,
    duration: Duration,
) -> ReadReport {
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = JoinSet::new();
    for _ in 0..concurrency {
        let (client, read) = (client.clone(), read.clone());
        clients.spawn(async move {
            let mut latency = stats::histogram();
            let mut statuses = BTreeMap::<u16, u64>::new();
            let mut transport_errors = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let answer = match read.send(&client).send().await {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.ok().map(|_| status)
                    }
                    Err(_) => None,
                };
                match answer {
                    Some(status) => {
                        if status == StatusCode::OK || status == StatusCode::NOT_MODIFIED {
                            stats::record(&mut latency, sent.elapsed());
                        }
                        *statuses.entry(status.as_u16()).or_default() += 1;
                    }
                    None => transport_errors += 1,
                }
            }
            (latency, statuses, transport_errors)
        });
    }
    let mut latency = stats::histogram();
    let mut statuses = BTreeMap::new();
    let mut transport_errors = 0;
    while let Some(Ok((client_latency, client_statuses, client_errors))) = clients.join_next().await
    {
        let _ = latency.add(&client_latency);
        for (status, count) in client_statuses {
            *statuses.entry(status).or_default() += count;
        }
        transport_errors += client_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ReadReport {
        concurrency,
        elapsed_s: elapsed,
        throughput: latency.len() as f64 / elapsed,
        latency: Percentiles::of(&latency),
        statuses,
        transport_errors,
    }
}
