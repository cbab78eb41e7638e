//! Herald's workload: what a care-at-home platform's clients send. Most
//! commands are chat messages between a patient and their doctor; then come
//! read receipts and edits, bookings through their lifecycle, and payments,
//! some of which the patient confirms on the provider's page.
//!
//! Each client plays one patient and one doctor with a chat of their own, so
//! clients do not queue behind each other on one aggregate, as the users of
//! a real platform mostly do not.

use std::collections::VecDeque;

use anyhow::Context;
use api::auth::JwtKeys;
use domain::values::{Actor, CallType, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, Method};
use serde_json::json;
use uuid::Uuid;

use crate::driver::{Kind, Reply, Request, Worker};
use crate::herald::{self, CareChat, Person, BOOKINGS, CHATS, PAYMENTS};

/// Most bookings a client remembers in each state; older ones are forgotten.
const REMEMBERED: usize = 64;

/// What a command was, to learn from its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Message { by_patient: bool },
    ReadUpTo,
    Edit,
    Book,
    Assign(Uuid),
    Complete(Uuid),
    Cancel(Uuid),
    Pay(Uuid),
    Confirm,
}

/// One client's patient, doctor, chat and bookings.
pub struct HeraldWorker {
    api: String,
    patient: Person,
    doctor: Person,
    admin: Person,
    chat: Uuid,
    last_seq: u64,
    /// The doctor's read marker: a read receipt at or below it stores
    /// nothing, and every command of the load must store an event.
    doctor_read: u64,
    last_patient_message: Option<Uuid>,
    pending: VecDeque<Uuid>,
    assigned: VecDeque<Uuid>,
    payable: VecDeque<Uuid>,
    confirmations: VecDeque<String>,
    last: Option<Op>,
    rng: StdRng,
}

/// Mints tokens and creates one patient, doctor and chat per client.
pub async fn setup(
    client: &Client,
    base: &str,
    keys: &JwtKeys,
    clients: usize,
) -> anyhow::Result<Vec<HeraldWorker>> {
    let api = herald::api(base);
    let admin = Person::new(keys, Role::Admin);
    let mut workers = Vec::with_capacity(clients);
    for index in 0..clients {
        let chat = CareChat::open(client, &api, keys).await?;
        workers.push(HeraldWorker {
            api: api.clone(),
            patient: chat.patient,
            doctor: chat.doctor,
            admin: admin.clone(),
            chat: chat.id,
            last_seq: 0,
            doctor_read: 0,
            last_patient_message: None,
            pending: VecDeque::new(),
            assigned: VecDeque::new(),
            payable: VecDeque::new(),
            confirmations: VecDeque::new(),
            last: None,
            rng: StdRng::seed_from_u64(index as u64),
        });
    }
    Ok(workers)
}

fn remember(queue: &mut VecDeque<Uuid>, id: Uuid) {
    if queue.len() >= REMEMBERED {
        queue.pop_front();
    }
    queue.push_back(id);
}

impl HeraldWorker {
    fn command(
        &self,
        method: Method,
        path: String,
        by: &Person,
        body: serde_json::Value,
    ) -> Request {
        herald::command(&self.api, method, &path, &by.token, body)
    }

    /// The weighted choice of the next command, falling back to a chat
    /// message or a new booking when the chosen one has nothing to act on.
    fn choose(&mut self) -> Op {
        let roll = self.rng.gen_range(0..100);
        let by_patient = self.rng.gen_bool(0.5);
        match roll {
            0..=67 => Op::Message { by_patient },
            68..=71 if self.last_seq > self.doctor_read => Op::ReadUpTo,
            72..=74 if self.last_patient_message.is_some() => Op::Edit,
            75..=83 => Op::Book,
            84..=88 => match self.pending.pop_front() {
                Some(booking) => Op::Assign(booking),
                None => Op::Book,
            },
            89..=91 => match self.assigned.pop_front() {
                Some(booking) => Op::Complete(booking),
                None => Op::Book,
            },
            92 => match self.pending.pop_back() {
                Some(booking) => {
                    self.payable.retain(|b| *b != booking);
                    Op::Cancel(booking)
                }
                None => Op::Book,
            },
            93..=97 => match self.payable.pop_front() {
                Some(booking) => Op::Pay(booking),
                None => Op::Book,
            },
            98..=99 if !self.confirmations.is_empty() => Op::Confirm,
            _ => Op::Message { by_patient },
        }
    }

    fn request(&mut self, op: Op) -> Request {
        let chat = self.chat;
        match op {
            Op::Message { by_patient } => {
                let by = if by_patient {
                    &self.patient
                } else {
                    &self.doctor
                };
                self.command(
                    Method::POST,
                    format!("/chats/{chat}/messages"),
                    by,
                    herald::message(self.last_seq + 1),
                )
            }
            Op::ReadUpTo => self.command(
                Method::POST,
                format!("/chats/{chat}/read"),
                &self.doctor,
                json!({ "up_to_seq": self.last_seq }),
            ),
            Op::Edit => {
                let message = self.last_patient_message.unwrap_or_default();
                // A new text every time: an edit to the same text may store nothing.
                let variant: u32 = self.rng.gen();
                self.command(
                    Method::PATCH,
                    format!("/chats/{chat}/messages/{message}"),
                    &self.patient,
                    json!({ "body": format!("Sorry, I meant tomorrow morning ({variant}).") }),
                )
            }
            Op::Book => self.command(
                Method::POST,
                "/bookings".to_owned(),
                &self.patient,
                herald::booking(CallType::Urgent, None),
            ),
            Op::Assign(booking) => self.command(
                Method::POST,
                format!("/bookings/{booking}/assign"),
                &self.admin,
                json!({ "doctor_id": self.doctor.actor.user_id }),
            ),
            Op::Complete(booking) => self.command(
                Method::POST,
                format!("/bookings/{booking}/complete"),
                &self.doctor,
                json!({}),
            ),
            Op::Cancel(booking) => self.command(
                Method::POST,
                format!("/bookings/{booking}/cancel"),
                &self.patient,
                json!({ "reason": "feeling better" }),
            ),
            Op::Pay(booking) => self.command(
                Method::POST,
                "/payments".to_owned(),
                &self.patient,
                json!({ "booking_id": booking, "method": "sbp" }),
            ),
            Op::Confirm => Request {
                method: Method::POST,
                url: format!(
                    "{}/succeed",
                    self.confirmations.pop_front().unwrap_or_default()
                ),
                token: None,
                body: None,
                kind: Kind::Side,
            },
        }
    }
}

impl Worker for HeraldWorker {
    fn next(&mut self) -> Request {
        let op = self.choose();
        self.last = Some(op);
        self.request(op)
    }

    fn answered(&mut self, _request: &Request, reply: &Reply) -> &'static [&'static str] {
        let Some(op) = self.last.take() else {
            return &[];
        };
        if !reply.status.is_success() {
            return &[];
        }
        let id: Option<Uuid> = reply.body["id"].as_str().and_then(|id| id.parse().ok());
        match op {
            Op::Message { by_patient } => {
                if let Some(seq) = reply.body["seq"].as_u64() {
                    self.last_seq = self.last_seq.max(seq);
                }
                if by_patient {
                    self.last_patient_message = id.or(self.last_patient_message);
                }
                CHATS
            }
            Op::ReadUpTo => {
                self.doctor_read = self.doctor_read.max(self.last_seq);
                CHATS
            }
            Op::Edit => CHATS,
            Op::Book => {
                if let Some(booking) = id {
                    remember(&mut self.pending, booking);
                    remember(&mut self.payable, booking);
                }
                BOOKINGS
            }
            Op::Assign(booking) => {
                remember(&mut self.assigned, booking);
                BOOKINGS
            }
            Op::Complete(_) | Op::Cancel(_) => BOOKINGS,
            Op::Pay(_) => {
                if let Some(url) = reply.body["confirmation_url"].as_str() {
                    if self.confirmations.len() < REMEMBERED {
                        self.confirmations.push_back(url.to_owned());
                    }
                }
                PAYMENTS
            }
            Op::Confirm => &[],
        }
    }
}

/// A patient with a chat of `messages` messages and `bookings` bookings, for
/// timing reads of the chat's messages and the patient's bookings.
pub struct ReadFixture {
    /// `GET …/chats/{id}/messages`.
    pub messages_url: String,
    /// `GET …/bookings`.
    pub bookings_url: String,
    /// `GET …/bookings/{id}` of the last booking made.
    pub booking_url: String,
    /// The patient's token.
    pub token: String,
}

/// Creates the data the read benchmark reads.
pub async fn read_fixture(
    client: &Client,
    base: &str,
    keys: &JwtKeys,
    messages: usize,
    bookings: usize,
) -> anyhow::Result<ReadFixture> {
    let mut worker = setup(client, base, keys, 1)
        .await?
        .pop()
        .context("setup made no client")?;
    let mut plan: Vec<Op> = (0..messages)
        .map(|i| Op::Message {
            by_patient: i.is_multiple_of(2),
        })
        .collect();
    plan.extend((0..bookings).map(|_| Op::Book));
    let mut booking = None;
    for op in plan {
        let request = worker.request(op);
        let reply = herald::accepted(client, &request, "preparing reads").await?;
        if matches!(op, Op::Book) {
            booking = reply.body["id"].as_str().map(str::to_owned);
        }
    }
    let booking = booking.context("the read fixture made no booking")?;
    Ok(ReadFixture {
        messages_url: format!("{}/chats/{}/messages?limit=50", worker.api, worker.chat),
        bookings_url: format!("{}/bookings?limit=50", worker.api),
        booking_url: format!("{}/bookings/{booking}", worker.api),
        token: worker.patient.token,
    })
}

impl HeraldWorker {
    /// The patient this client plays.
    pub fn patient(&self) -> Actor {
        self.patient.actor
    }
}
