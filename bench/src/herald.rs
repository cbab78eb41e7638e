//! What every Herald workload needs: the people it plays with their tokens,
//! command requests to the API, chats to post into, and the read models each
//! kind of command shows up in.

use std::time::Duration;

use anyhow::Context;
use api::auth::JwtKeys;
use chrono::{DateTime, Utc};
use domain::values::{Actor, CallType, Role};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::driver::{self, Kind, Reply, Request};

/// How long the minted tokens live: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The read models a chat command shows up in.
pub const CHATS: &[&str] = &["chats"];
/// The read models a booking command shows up in.
pub const BOOKINGS: &[&str] = &["bookings", "summary"];
/// The read models a payment command shows up in.
pub const PAYMENTS: &[&str] = &["payments", "bookings", "summary"];

/// Someone the load plays, with a token that says so.
#[derive(Debug, Clone)]
pub struct Person {
    /// Who they are.
    pub actor: Actor,
    /// Their bearer token.
    pub token: String,
}

impl Person {
    /// A new person in `role`.
    pub fn new(keys: &JwtKeys, role: Role) -> Self {
        Self::existing(keys, Actor::new(Uuid::new_v4(), role))
    }

    /// A new person in `role` with an account, opened by an admin through
    /// `POST /users`, so that they may join chats and take visits.
    pub async fn enrolled(
        client: &Client,
        api: &str,
        keys: &JwtKeys,
        role: Role,
    ) -> anyhow::Result<Self> {
        let admin = Self::new(keys, Role::Admin);
        let body = json!({
            "email": format!("{}@load.herald.test", Uuid::new_v4()),
            "name": format!("Load {role}"),
            "role": role.to_string(),
        });
        let request = command(api, Method::POST, "/users", &admin.token, body);
        let reply = accepted(client, &request, "opening an account").await?;
        let user_id = reply.body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("an account's answer carries no id")?;
        Ok(Self::existing(keys, Actor::new(user_id, role)))
    }

    /// `actor`, who already exists in Herald's data (a seeded chat's member).
    pub fn existing(keys: &JwtKeys, actor: Actor) -> Self {
        Self {
            actor,
            token: keys.mint(actor, TOKEN_TTL),
        }
    }
}

/// `…/api/v1` of the Herald at `base`.
pub fn api(base: &str) -> String {
    format!("{}/api/v1", base.trim_end_matches('/'))
}

/// A command to `{api}{path}`, sent with `token`.
pub fn command(api: &str, method: Method, path: &str, token: &str, body: Value) -> Request {
    Request {
        method,
        url: format!("{api}{path}"),
        token: Some(token.to_owned()),
        body: Some(body),
        kind: Kind::Command,
    }
}

/// Sends a request of a workload's setup, which must be accepted; `doing`
/// says what it was for.
pub async fn accepted(client: &Client, request: &Request, doing: &str) -> anyhow::Result<Reply> {
    let reply = driver::send(client, request, None)
        .await
        .with_context(|| format!("Herald did not answer while {doing}"))?;
    anyhow::ensure!(
        reply.status.is_success(),
        "{doing} answered {}: {}",
        reply.status,
        reply.body
    );
    Ok(reply)
}

/// A patient and a doctor with a group chat of their own.
pub struct CareChat {
    /// The patient, who opened the chat.
    pub patient: Person,
    /// The doctor.
    pub doctor: Person,
    /// The chat.
    pub id: Uuid,
}

impl CareChat {
    /// A new patient opens a chat with a new doctor, who has an account.
    pub async fn open(client: &Client, api: &str, keys: &JwtKeys) -> anyhow::Result<Self> {
        let patient = Person::new(keys, Role::Patient);
        let doctor = Person::enrolled(client, api, keys, Role::Doctor).await?;
        let request = command(
            api,
            Method::POST,
            "/chats",
            &patient.token,
            json!({ "kind": "group", "title": "Care team", "members": [doctor.actor.user_id] }),
        );
        let reply = accepted(client, &request, "creating a chat").await?;
        let id = reply.body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("a chat's answer carries no id")?;
        Ok(Self {
            patient,
            doctor,
            id,
        })
    }
}

/// The body of `POST /bookings`: a home visit of `call_type`, at
/// `scheduled_at` if given.
pub fn booking(call_type: CallType, scheduled_at: Option<DateTime<Utc>>) -> Value {
    let mut body = json!({
        "call_type": call_type.as_str(),
        "address": "Tverskaya 1, Moscow",
        "amount_minor": 150_000,
    });
    if let Some(at) = scheduled_at {
        body["scheduled_at"] = json!(at);
    }
    body
}

/// The body of `POST /chats/{id}/messages`: the `n`-th message its client sends.
pub fn message(n: u64) -> Value {
    json!({ "body": message_text(n) })
}

/// The text of the `n`-th message.
pub fn message_text(n: u64) -> String {
    format!("How are you feeling today? Note {n}.")
}
