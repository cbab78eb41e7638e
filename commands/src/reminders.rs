//! Reminders of unread chat messages: messages in, `RemindUnread` commands
//! out, once the messages have waited long enough.
//!
//! The follower of the log ([`ReminderSchedule`]) notes, in the transaction
//! that moves its checkpoint, when each chat's unread messages fall due
//! (`chat_reminders`); [`Reminders::run`] issues a chat's `RemindUnread`
//! through the newest message that has waited long enough, once one has,
//! and clears what it covered. The chat decides who is reminded
//! of what (`UnreadReminded`): only members who neither read the messages
//! nor were reminded of them, each of the messages from others. The decision
//! is an event, so the notifications it makes come again in any replay. A
//! crash between the command and the clearing only issues the command again,
//! which then finds nobody left to remind.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::access::AggregateKind;
use domain::chat::{Chat, ChatCommand, ChatEvent};
use domain::values::Actor;
use herald_nats::follower::{ApplyError, Follower, Source, TransactionalFollower};
use herald_nats::LogEntry;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{CommandError, Metadata, WriteSide};

/// Its name in `projection_checkpoints` and `projection_dead_letters`.
pub const CHECKPOINT: &str = "chat-reminders";
/// How often due reminders are looked for.
const TICK: Duration = Duration::from_millis(200);
/// Reminders issued per look.
const BATCH: i64 = 100;
/// How long a chat whose reminder a process took is left to it: others pass
/// it by meanwhile, and one that failed comes back after it.
const LEASE: Duration = Duration::from_secs(30);
/// Messages whose time to be reminded of passed longer ago than this (a log
/// imported, a long outage) are history, not news: nobody is reminded of them.
const STALE: Duration = Duration::from_secs(3600);

/// Notes when chats' unread messages fall due.
pub struct ReminderSchedule {
    /// How long a message may stay unread.
    after: Duration,
}

impl Follower for ReminderSchedule {
    const BATCH: usize = 1000;

    fn name(&self) -> &str {
        CHECKPOINT
    }

    /// Chat messages.
    fn follows(&self, entry: &LogEntry) -> bool {
        AggregateKind::parse(&entry.aggregate_type) == Some(AggregateKind::Chat)
            && entry.event_type == "MessageSent"
    }
}

impl TransactionalFollower for ReminderSchedule {
    fn apply(
        &self,
        tx: &mut PgConnection,
        entries: &[LogEntry],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        self.schedule(tx, entries)
    }
}

impl ReminderSchedule {
    async fn schedule(
        &self,
        tx: &mut PgConnection,
        entries: &[LogEntry],
    ) -> Result<(), ApplyError> {
        let after = chrono::Duration::from_std(self.after).unwrap_or(chrono::Duration::MAX);
        let stale = Utc::now() - chrono::Duration::from_std(STALE).unwrap_or(chrono::Duration::MAX);
        let (mut chats, mut seqs, mut due) = (Vec::new(), Vec::new(), Vec::new());
        for entry in entries {
            if !self.follows(entry) || entry.recorded_at + after < stale {
                continue;
            }
            let decoded = entry.decode().map_err(|source| ApplyError::Decode {
                event_type: entry.event_type.clone(),
                position: entry.position,
                source,
            })?;
            let ChatEvent::MessageSent { seq, .. } = decoded else {
                continue;
            };
            let Ok(chat) = Uuid::parse_str(&entry.aggregate_id) else {
                continue;
            };
            chats.push(chat);
            seqs.push(i64::try_from(seq).unwrap_or(i64::MAX));
            due.push(entry.recorded_at + after);
        }
        if chats.is_empty() {
            return Ok(());
        }
        // Entries come in log order, so a chat's later message has the later
        // due time; the first keeps `due_at`, the last sets the rest.
        sqlx::query(
            "INSERT INTO chat_reminders AS r (chat_id, due_at, through_seq, latest_due_at)
             SELECT chat_id, min(due), max(seq), max(due)
               FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS m (chat_id, seq, due)
              GROUP BY chat_id
             ON CONFLICT (chat_id) DO UPDATE
                SET through_seq = GREATEST(r.through_seq, EXCLUDED.through_seq),
                    latest_due_at = GREATEST(r.latest_due_at, EXCLUDED.latest_due_at)",
        )
        .bind(chats)
        .bind(seqs)
        .bind(due)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Follows the log for chat messages and reminds members of those they left
/// unread.
pub struct Reminders {
    write: Arc<WriteSide>,
    source: Source,
    schedule: ReminderSchedule,
}

impl Reminders {
    /// Reminders of messages unread for `after`, following the log of
    /// `source` and issued through `write`.
    pub fn new(write: Arc<WriteSide>, source: Source, after: Duration) -> Self {
        Self {
            write,
            source,
            schedule: ReminderSchedule { after },
        }
    }

    /// Schedules and issues reminders until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let schedule = self.source.follow_in_transaction(&self.schedule, async {
            let mut stopped = stopped.clone();
            let _ = stopped.changed().await;
        });
        let issue = async {
            let mut stopped = stopped.clone();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tick.tick() => {}
                }
                if let Err(err) = self.remind_due().await {
                    tracing::warn!(%err, "reminders of unread messages wait");
                }
            }
        };
        let signal = async move {
            shutdown.await;
            drop(stop);
        };
        tokio::join!(schedule, issue, signal);
    }

    /// Issues the reminders that are due, each chat's on its own: one that
    /// fails is tried again once its lease ends, and holds up no other.
    async fn remind_due(&self) -> Result<(), sqlx::Error> {
        let due: Vec<(Uuid, i64)> = sqlx::query_as(
            "UPDATE chat_reminders r SET due_at = now() + $2 * interval '1 millisecond'
               FROM (SELECT chat_id FROM chat_reminders WHERE due_at <= now()
                      ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) d
              WHERE r.chat_id = d.chat_id
             RETURNING r.chat_id, r.through_seq",
        )
        .bind(BATCH)
        .bind(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX))
        .fetch_all(self.write.pool())
        .await?;
        for (chat_id, through_seq) in due {
            if let Err(err) = self.remind(chat_id, through_seq).await {
                tracing::warn!(%chat_id, %err, "a reminder of unread messages waits");
            }
        }
        Ok(())
    }

    /// Reminds the members of `chat_id` of the messages up to `through_seq`
    /// that have waited long enough, and clears what that covered; newer
    /// ones fall due with the newest.
    async fn remind(&self, chat_id: Uuid, through_seq: i64) -> Result<(), CommandError> {
        let pool = self.write.pool();
        let waited =
            Utc::now() - chrono::Duration::from_std(self.schedule.after).unwrap_or_default();
        let newest: Option<(String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT event_type, event_version, payload FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = 'MessageSent'
                AND recorded_at <= $3
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(AggregateKind::Chat.as_str())
        .bind(chat_id.to_string())
        .bind(waited)
        .fetch_optional(pool)
        .await?;
        let seq = match newest.map(|(event_type, version, payload)| {
            domain::upcast::decode::<ChatEvent>(&event_type, &version, payload)
        }) {
            Some(Ok(ChatEvent::MessageSent { seq, .. })) => {
                i64::try_from(seq).unwrap_or(i64::MAX).min(through_seq)
            }
            _ => 0,
        };
        if seq > 0 {
            let command = ChatCommand::RemindUnread {
                actor: Actor::system(),
                through_seq: u64::try_from(seq).unwrap_or(0),
                at: Utc::now(),
            };
            // The chat decides from what it knows, so issuing this again
            // reminds nobody twice.
            let metadata = Metadata::of_herald(format!("{CHECKPOINT}/{chat_id}/{seq}"));
            match self
                .write
                .execute::<Chat>(chat_id, command, &metadata)
                .await
            {
                Ok(_) | Err(CommandError::Rejected(_)) => {}
                Err(err) => return Err(err),
            }
        }
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM chat_reminders WHERE chat_id = $1 AND through_seq <= $2")
            .bind(chat_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE chat_reminders SET due_at = latest_due_at WHERE chat_id = $1")
            .bind(chat_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
