//! Herald's single-command workloads, each timing one write path on its own:
//! new bookings (a new aggregate every command), chat messages spread over
//! many chats, and chat messages all into one long chat.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use api::auth::JwtKeys;
use chrono::{TimeDelta, Utc};
use domain::values::{CallType, Role};
use reqwest::{Client, Method};
use uuid::Uuid;

use crate::driver::{Reply, Request, Worker};
use crate::herald::{self, CareChat, Person, BOOKINGS, CHATS};
use crate::seed::SeededChat;

/// A patient who books one home visit after another, going through every
/// kind of visit: urgent, a consultation now, a consultation and a
/// scheduled visit at a time between a day and about a month ahead.
pub struct Booker {
    api: String,
    patient: Person,
    sent: u64,
}

/// One patient per client.
pub fn bookers(base: &str, keys: &JwtKeys, clients: usize) -> Vec<Booker> {
    let api = herald::api(base);
    (0..clients)
        .map(|_| Booker {
            api: api.clone(),
            patient: Person::new(keys, Role::Patient),
            sent: 0,
        })
        .collect()
}

impl Worker for Booker {
    fn next(&mut self) -> Request {
        let ahead = TimeDelta::days(1) + TimeDelta::minutes((self.sent % 43_200) as i64);
        let body = match self.sent % 4 {
            0 => herald::booking(CallType::Urgent, None),
            1 => herald::booking(CallType::Consultation, None),
            2 => herald::booking(CallType::Consultation, Some(Utc::now() + ahead)),
            _ => herald::booking(CallType::Scheduled, Some(Utc::now() + ahead)),
        };
        self.sent += 1;
        herald::command(
            &self.api,
            Method::POST,
            "/bookings",
            &self.patient.token,
            body,
        )
    }

    fn answered(&mut self, _request: &Request, _reply: &Reply) -> &'static [&'static str] {
        BOOKINGS
    }
}

/// A chat the load posts into, with the members who may post.
struct Conversation {
    id: Uuid,
    members: Vec<Person>,
}

/// A client posting messages into a set of chats that all clients share:
/// each message goes to the next chat in turn over all clients, so the chats
/// get an even share, and each client posts as the next member in turn.
pub struct Poster {
    api: String,
    chats: Arc<[Conversation]>,
    turn: Arc<AtomicUsize>,
    client: usize,
    sent: u64,
}

/// Opens `chats` chats, each of a patient and a doctor, and returns one
/// poster per client.
pub async fn spread(
    client: &Client,
    base: &str,
    keys: &JwtKeys,
    clients: usize,
    chats: usize,
) -> anyhow::Result<Vec<Poster>> {
    let api = herald::api(base);
    let mut opened = Vec::with_capacity(chats);
    for _ in 0..chats {
        let chat = CareChat::open(client, &api, keys).await?;
        opened.push(Conversation {
            id: chat.id,
            members: vec![chat.patient, chat.doctor],
        });
    }
    Ok(posters(api, opened, clients))
}

/// One poster per client, all posting into the chat `herald-load seed-chat`
/// wrote, as its members.
pub fn hot(base: &str, keys: &JwtKeys, seeded: &SeededChat, clients: usize) -> Vec<Poster> {
    let members = seeded
        .members
        .iter()
        .map(|actor| Person::existing(keys, *actor))
        .collect();
    let chat = Conversation {
        id: seeded.chat_id,
        members,
    };
    posters(herald::api(base), vec![chat], clients)
}

fn posters(api: String, chats: Vec<Conversation>, clients: usize) -> Vec<Poster> {
    let chats: Arc<[Conversation]> = chats.into();
    let turn = Arc::new(AtomicUsize::new(0));
    (0..clients)
        .map(|client| Poster {
            api: api.clone(),
            chats: chats.clone(),
            turn: turn.clone(),
            client,
            sent: 0,
        })
        .collect()
}

impl Worker for Poster {
    fn next(&mut self) -> Request {
        let chat = &self.chats[self.turn.fetch_add(1, Ordering::Relaxed) % self.chats.len()];
        let member = &chat.members[(self.client + self.sent as usize) % chat.members.len()];
        self.sent += 1;
        herald::command(
            &self.api,
            Method::POST,
            &format!("/chats/{}/messages", chat.id),
            &member.token,
            herald::message(self.sent),
        )
    }

    fn answered(&mut self, _request: &Request, _reply: &Reply) -> &'static [&'static str] {
        CHATS
    }
}
