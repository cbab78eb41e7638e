//! Load on the live gateway: many WebSocket connections to one `herald up`.
//!
//! Starts `herald up` (built with `cargo build --release -p api`) on a fresh
//! database and stream prefix, opens `--connections` sockets (one user each),
//! groups them into chats of `--members`, and has one member of each chat send
//! messages over its socket, `--rate` messages a second in all, for
//! `--seconds`. Each message carries its send time, so every member that
//! receives it measures the delivery latency. Reports p50/p99 delivery latency
//! and the server's resident memory per connection (its `VmRSS` before and
//! after the sockets opened).
//!
//! ```sh
//! cargo build --release -p api --examples
//! ulimit -n 20000   # both ends of every socket live on this machine
//! target/release/examples/live_load --connections 5000
//! ```
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::auth::JwtKeys;
use domain::values::{Actor, Role};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

const JWT_SECRET: &str = "live-load-secret-live-load-secret";

struct Args {
    connections: usize,
    members: usize,
    rate: u64,
    seconds: u64,
    herald: String,
    postgres: String,
}

fn args() -> Args {
    let mut args = Args {
        connections: 5000,
        members: 10,
        rate: 200,
        seconds: 30,
        herald: "target/release/herald".to_owned(),
        postgres: "postgres://postgres@127.0.0.1:5432".to_owned(),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_default();
        match flag.as_str() {
            "--connections" => args.connections = value.parse().unwrap(),
            "--members" => args.members = value.parse().unwrap(),
            "--rate" => args.rate = value.parse().unwrap(),
            "--seconds" => args.seconds = value.parse().unwrap(),
            "--herald" => args.herald = value,
            "--postgres" => args.postgres = value,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The server process, stopped however this program ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args();
    let stamp = now_micros();
    let database = format!("herald_live_load_{stamp}");
    let prefix = format!("liveload{stamp}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let server = std::process::Command::new(&args.herald)
        .arg("up")
        .env(
            "HERALD_DATABASE_URL",
            format!("{}/{database}", args.postgres),
        )
        .env("HERALD_NATS_PREFIX", &prefix)
        .env("HERALD_LISTEN", &address)
        .env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_WEBHOOK_SECRET", "live-load-webhook-secret")
        .env("RUST_LOG", "warn")
        // Every simulated user comes from one loopback address.
        .env("HERALD_RATE_LIMIT_PER_SECOND", "0")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = server.id();
    let server = Server(server);
    let http = reqwest::Client::new();
    let base = format!("http://{address}");
    let started = Instant::now();
    while http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("herald did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_idle = rss_kib(pid);

    let keys = JwtKeys::new(&SecretString::from(JWT_SECRET))?;
    let users: Vec<Actor> = (0..args.connections)
        .map(|i| {
            let role = if i % args.members == 0 {
                Role::Doctor
            } else {
                Role::Patient
            };
            Actor::new(Uuid::new_v4(), role)
        })
        .collect();
    let groups: Vec<Vec<Actor>> = users.chunks(args.members).map(<[Actor]>::to_vec).collect();
    let chats: Vec<Uuid> = futures::stream::iter(groups.iter().map(|group| {
        let http = http.clone();
        let token = keys.mint(group[0], Duration::from_secs(3600));
        let members: Vec<Uuid> = group[1..].iter().map(|a| a.user_id).collect();
        let url = format!("{base}/api/v1/chats");
        async move {
            let reply: Value = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "kind": "group", "title": "load", "members": members }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            reply["id"].as_str().unwrap().parse::<Uuid>().unwrap()
        }
    }))
    .buffered(16)
    .collect()
    .await;
    eprintln!("{} chats created", chats.len());

    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let connect_started = Instant::now();
    let ws_base = format!("ws://{address}/api/v1/ws");
    let sinks: Vec<Sink> = futures::stream::iter(users.iter().map(|user| {
        let url = format!(
            "{ws_base}?token={}",
            keys.mint(*user, Duration::from_secs(3600))
        );
        let latencies = latencies.clone();
        async move {
            let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let (sink, mut stream) = socket.split();
            let ready = stream.next().await.unwrap().unwrap();
            assert!(ready.to_text().unwrap().contains("ready"));
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if frame["event_type"] != "MessageSent" {
                        continue;
                    }
                    let sent = frame["event"]["body"]
                        .as_str()
                        .and_then(|b| b.strip_prefix("t="))
                        .and_then(|t| t.parse::<u64>().ok());
                    if let Some(sent) = sent {
                        let latency = now_micros().saturating_sub(sent);
                        latencies.lock().unwrap().push(latency);
                    }
                }
            });
            sink
        }
    }))
    .buffered(64)
    .collect()
    .await;
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = rss_kib(pid);
    eprintln!(
        "{} sockets open in {:.1}s; server RSS {} KiB → {} KiB",
        sinks.len(),
        connect_time.as_secs_f64(),
        rss_idle,
        rss_connected
    );

    // The first member of each chat sends; its sink is at the chat's index.
    let senders: Vec<Arc<Mutex<Sink>>> = sinks
        .into_iter()
        .map(|sink| Arc::new(Mutex::new(sink)))
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    let load_started = Instant::now();
    let mut sent = 0u64;
    while load_started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        let chat_index = (sent as usize) % chats.len();
        let sender = senders[chat_index * args.members].clone();
        let frame = json!({
            "type": "send_message",
            "chat_id": chats[chat_index],
            "client_id": format!("load-{sent}"),
            "body": format!("t={}", now_micros()),
        });
        tokio::spawn(async move {
            let _ = sender
                .lock()
                .await
                .send(Message::Text(frame.to_string().into()))
                .await;
        });
        sent += 1;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_loaded = rss_kib(pid);
    let mut samples = latencies.lock().unwrap().clone();
    samples.sort_unstable();
    let expected = sent * args.members as u64;
    let per_connection = (rss_connected.saturating_sub(rss_idle)) as f64 / args.connections as f64;
    println!(
        "connections={} chats={} members/chat={} rate={}/s seconds={} sent={} delivered={}/{} \
         p50_ms={:.1} p99_ms={:.1} max_ms={:.1} rss_idle_kib={} rss_connected_kib={} \
         rss_after_load_kib={} rss_per_connection_kib={:.1} connect_s={:.1}",
        args.connections,
        chats.len(),
        args.members,
        args.rate,
        args.seconds,
        sent,
        samples.len(),
        expected,
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
        rss_idle,
        rss_connected,
        rss_loaded,
        per_connection,
        connect_time.as_secs_f64()
    );
    drop(server);
    if let Ok(pool) = sqlx::PgPool::connect(&format!("{}/postgres", args.postgres)).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .execute(&pool)
        .await;
    }
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let stream = herald_nats::Topology::new(&prefix).stream_name();
        let _ = async_nats::jetstream::new(client)
            .delete_stream(stream)
            .await;
    }
    Ok(())
}
