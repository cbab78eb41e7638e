//! The chats read model: each user's chat list with unread counts, a chat's
//! details, and its message history, newest first.
//!
//! A member's `unread_count` is kept equal to the number of messages after
//! their read marker that are not deleted and that someone else wrote. It is
//! maintained incrementally (a new message adds one for everyone but its
//! author, a deletion takes one back from those who had not read it) and
//! recounted when the marker moves, so the chat list never counts rows.

mod fold;

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use domain::chat::ChatEvent;
use domain::values::ChatKind;
use herald_nats::LogEntry;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{aggregate_uuid, ApplyError, CHAT, NAMES_VERSION};

pub(crate) use fold::Fold;

/// A chat as it appears in one user's chat list.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct ChatSummary {
    /// The chat's id.
    pub id: Uuid,
    /// `direct` or `group`.
    #[schema(value_type = ChatKind)]
    pub kind: String,
    /// The display name, if one was given.
    pub title: Option<String>,
    /// Current members in the order they joined.
    pub members: Vec<Uuid>,
    /// The members' names by id; one without an account is left out.
    #[schema(value_type = HashMap<Uuid, String>)]
    pub member_names: Value,
    /// `{id, seq, author, body, sent_at}` of the newest message not deleted,
    /// so a list can show a preview without loading messages.
    #[schema(value_type = Option<Object>)]
    pub last_message: Option<Value>,
    /// Messages after the user's read marker, not deleted, written by others.
    #[schema(minimum = 0)]
    pub unread_count: i64,
}

/// A chat on its own, for its members and admins.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct ChatDetails {
    /// The chat's id.
    pub id: Uuid,
    /// `direct` or `group`.
    #[schema(value_type = ChatKind)]
    pub kind: String,
    /// The display name, if one was given.
    pub title: Option<String>,
    /// Who opened it.
    pub created_by: Uuid,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// Current members in the order they joined.
    pub members: Vec<Uuid>,
    /// The members' names by id; one without an account is left out.
    #[schema(value_type = HashMap<Uuid, String>)]
    pub member_names: Value,
    /// `{id, seq, author, body, sent_at}` of the newest message not deleted.
    #[schema(value_type = Option<Object>)]
    pub last_message: Option<Value>,
    /// The log position of the chat's latest event: its ETag, with the
    /// version of the names shown.
    #[serde(skip)]
    pub version: i64,
    /// See [`crate::NAMES_VERSION`].
    #[serde(skip)]
    pub names_version: i64,
}

/// What a reader of a chat's messages is checked against before they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ChatAccess {
    /// Whether the reader belongs to the chat.
    pub member: bool,
    /// The log position of the chat's latest event.
    pub version: i64,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct MessageRow {
    /// The message's id.
    pub id: Uuid,
    /// Its place in the chat, from 1 without gaps; the paging key.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// Who wrote it.
    pub author: Uuid,
    /// The text; `null` once deleted, since a retracted text is not shown
    /// again, and for a message of attachments only.
    pub body: Option<String>,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// When it was last edited, if ever.
    pub edited_at: Option<DateTime<Utc>>,
    /// Whether it was retracted; kept in the history so `seq` stays gapless.
    pub deleted: bool,
    /// The files it carries, in the order its author gave them, each
    /// `{id, filename, content_type, size, thumbnail}`; none once it is deleted. Their
    /// bytes are fetched through `GET /chats/{id}/attachments/{attachment_id}`.
    #[schema(value_type = Vec<AttachmentInfo>)]
    pub attachments: Value,
}

/// A file a message carries, as the message shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AttachmentInfo {
    /// The attachment's id.
    pub id: Uuid,
    /// Its name, sanitised.
    pub filename: String,
    /// Its media type.
    pub content_type: String,
    /// Its size in bytes.
    pub size: i64,
    /// Whether a thumbnail of it (an image) is ready, for
    /// `GET /chats/{id}/attachments/{attachment_id}` to link.
    pub thumbnail: bool,
}

/// An attachment of a chat, for whoever may download it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttachmentRow {
    /// Its name, sanitised.
    pub filename: String,
    /// Its media type.
    pub content_type: String,
    /// Its size in bytes.
    pub size: i64,
    /// Who announced it.
    pub announced_by: Uuid,
    /// Whether a message still shown carries it.
    pub sent: bool,
    /// Whether a thumbnail of it is stored beside it.
    pub thumbnail: bool,
}

/// Applies log entries, in order, to the chat tables; entries of other
/// aggregates change nothing. Consecutive new messages, the bulk of chat
/// traffic, are written together in one statement, which changes the tables
/// exactly as writing them one at a time would.
pub(crate) async fn apply_all(
    conn: &mut PgConnection,
    entries: &[LogEntry],
) -> Result<(), ApplyError> {
    let mut sent = NewMessages::default();
    let mut changed: HashMap<Uuid, i64> = HashMap::new();
    for entry in entries {
        if entry.aggregate_type != CHAT {
            continue;
        }
        let chat_id = aggregate_uuid(entry)?;
        let event = crate::decode::<ChatEvent>(entry)?;
        apply_event(conn, &mut sent, entry, chat_id, event).await?;
        let latest = changed.entry(chat_id).or_default();
        *latest = (*latest).max(entry.position);
    }
    sent.write(conn).await?;
    stamp_versions(conn, changed).await?;
    Ok(())
}

/// Moves each changed chat's `version` up to the position of its latest
/// entry, in one statement for the batch; a redelivered entry never moves it
/// back.
async fn stamp_versions(
    conn: &mut PgConnection,
    changed: HashMap<Uuid, i64>,
) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let (chat_ids, positions): (Vec<Uuid>, Vec<i64>) = changed.into_iter().unzip();
    sqlx::query(
        "UPDATE rm_chats c SET version = GREATEST(c.version, v.position)
           FROM unnest($1::uuid[], $2::bigint[]) AS v (chat_id, position)
          WHERE c.chat_id = v.chat_id",
    )
    .bind(chat_ids)
    .bind(positions)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies one chat event: a new message joins `sent`, to be written with the
/// ones around it; any other event first writes what `sent` holds, so every
/// event applies in log order.
async fn apply_event(
    conn: &mut PgConnection,
    sent: &mut NewMessages,
    entry: &LogEntry,
    chat_id: Uuid,
    event: ChatEvent,
) -> Result<(), ApplyError> {
    if !matches!(event, ChatEvent::MessageSent { .. }) {
        sent.write(conn).await?;
    }
    match event {
        ChatEvent::ChatCreated {
            chat_id,
            kind,
            title,
            members,
            created_by,
            created_at,
        } => {
            sqlx::query(
                "INSERT INTO rm_chats (chat_id, kind, title, created_by, created_at, last_seq,
                                       last_message, last_activity_position)
                 VALUES ($1, $2, $3, $4, $5, 0, NULL, $6)",
            )
            .bind(chat_id)
            .bind(kind.as_str())
            .bind(title.map(String::from))
            .bind(created_by)
            .bind(created_at)
            .bind(entry.position)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO rm_chat_members (chat_id, user_id, read_up_to, unread_count,
                                              joined_position, join_index)
                 SELECT $1, m.user_id, 0, 0, $3, m.ordinality::integer
                   FROM UNNEST($2::uuid[]) WITH ORDINALITY AS m (user_id, ordinality)",
            )
            .bind(chat_id)
            .bind(&members)
            .bind(entry.position)
            .execute(&mut *conn)
            .await?;
        }
        ChatEvent::MemberAdded { user_id, .. } => {
            // A newcomer (or someone coming back: leaving drops the marker)
            // starts with nothing read.
            sqlx::query(
                "INSERT INTO rm_chat_members (chat_id, user_id, read_up_to, unread_count,
                                              joined_position, join_index)
                 SELECT $1, $2, 0,
                        (SELECT count(*) FROM rm_chat_messages x
                          WHERE x.chat_id = $1 AND NOT x.deleted AND x.author <> $2),
                        $3, 0",
            )
            .bind(chat_id)
            .bind(user_id)
            .bind(entry.position)
            .execute(&mut *conn)
            .await?;
        }
        ChatEvent::MemberRemoved { user_id, .. } => {
            sqlx::query("DELETE FROM rm_chat_members WHERE chat_id = $1 AND user_id = $2")
                .bind(chat_id)
                .bind(user_id)
                .execute(&mut *conn)
                .await?;
        }
        ChatEvent::AttachmentAnnounced {
            attachment_id,
            filename,
            content_type,
            size,
            announced_by,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO rm_chat_attachments (attachment_id, chat_id, filename, content_type,
                                                  size, announced_by, announced_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(attachment_id)
            .bind(chat_id)
            .bind(filename.as_str())
            .bind(content_type.as_str())
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(announced_by)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        ChatEvent::MessageSent {
            message_id,
            seq,
            author,
            body,
            attachments,
            sent_at,
        } => {
            if !attachments.is_empty() {
                sqlx::query(
                    "UPDATE rm_chat_attachments a SET seq = $2, place = c.place::integer
                       FROM unnest($3::uuid[]) WITH ORDINALITY AS c (attachment_id, place)
                      WHERE a.chat_id = $1 AND a.attachment_id = c.attachment_id",
                )
                .bind(chat_id)
                .bind(to_i64(seq))
                .bind(&attachments)
                .execute(&mut *conn)
                .await?;
            }
            sent.push(
                entry,
                chat_id,
                message_id,
                seq,
                author,
                body.map(String::from),
                sent_at,
            );
        }
        ChatEvent::MessageEdited {
            seq,
            body,
            edited_at,
            ..
        } => {
            sqlx::query(
                "UPDATE rm_chat_messages SET body = $3, edited_at = $4
                  WHERE chat_id = $1 AND seq = $2 AND NOT deleted",
            )
            .bind(chat_id)
            .bind(to_i64(seq))
            .bind(String::from(body))
            .bind(edited_at)
            .execute(&mut *conn)
            .await?;
            refresh_last_message(conn, chat_id).await?;
        }
        ChatEvent::MessageDeleted { seq, .. } => {
            sqlx::query(
                "WITH retracted AS (
                     UPDATE rm_chat_messages SET deleted = true, body = NULL
                      WHERE chat_id = $1 AND seq = $2 AND NOT deleted
                  RETURNING seq, author)
                 UPDATE rm_chat_members m SET unread_count = m.unread_count - 1
                   FROM retracted r
                  WHERE m.chat_id = $1 AND m.user_id <> r.author AND m.read_up_to < r.seq
                    AND m.unread_count > 0",
            )
            .bind(chat_id)
            .bind(to_i64(seq))
            .execute(&mut *conn)
            .await?;
            refresh_last_message(conn, chat_id).await?;
        }
        // Reminders are the notifications' business; an expired upload no
        // message carried changes no read.
        ChatEvent::UnreadReminded { .. } | ChatEvent::AttachmentExpired { .. } => {}
        ChatEvent::ThumbnailRecorded { attachment_id, .. } => {
            sqlx::query(
                "UPDATE rm_chat_attachments SET thumbnail = true
                  WHERE chat_id = $1 AND attachment_id = $2",
            )
            .bind(chat_id)
            .bind(attachment_id)
            .execute(&mut *conn)
            .await?;
        }
        ChatEvent::ReadUpTo {
            user_id, up_to_seq, ..
        } => {
            sqlx::query(
                "UPDATE rm_chat_members m
                    SET read_up_to = GREATEST(m.read_up_to, $3),
                        unread_count = (SELECT count(*) FROM rm_chat_messages x
                                         WHERE x.chat_id = $1 AND x.seq > GREATEST(m.read_up_to, $3)
                                           AND NOT x.deleted AND x.author <> m.user_id)
                  WHERE m.chat_id = $1 AND m.user_id = $2",
            )
            .bind(chat_id)
            .bind(user_id)
            .bind(to_i64(up_to_seq))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// New messages gathered to be written in one statement.
#[derive(Default)]
struct NewMessages {
    chat_ids: Vec<Uuid>,
    seqs: Vec<i64>,
    message_ids: Vec<Uuid>,
    authors: Vec<Uuid>,
    bodies: Vec<Option<String>>,
    sent_at: Vec<DateTime<Utc>>,
    positions: Vec<i64>,
    previews: Vec<String>,
}

impl NewMessages {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        entry: &LogEntry,
        chat_id: Uuid,
        message_id: Uuid,
        seq: u64,
        author: Uuid,
        body: Option<String>,
        sent_at: DateTime<Utc>,
    ) {
        let seq = to_i64(seq);
        // Postgres keeps microseconds; the preview is cut the same way so it
        // reads the same whether written here or recomputed later.
        let sent_at = sent_at.trunc_subsecs(6);
        self.previews
            .push(last_message(message_id, seq, author, body.as_deref(), sent_at).to_string());
        self.chat_ids.push(chat_id);
        self.seqs.push(seq);
        self.message_ids.push(message_id);
        self.authors.push(author);
        self.bodies.push(body);
        self.sent_at.push(sent_at);
        self.positions.push(entry.position);
    }

    /// Writes the gathered messages and empties the list. Each adds one
    /// unread message for every member but its author who has not read that
    /// far, and becomes its chat's preview when it is the newest. A message
    /// whose seq or id is already stored fails the statement: the log says
    /// something the read model cannot hold, which is a dead letter, never a
    /// message silently left out.
    async fn write(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.chat_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[],
                                      $5::text[], $6::timestamptz[], $7::bigint[], $8::text[])
                     AS i (chat_id, seq, message_id, author, body, sent_at, position, preview)),
             inserted AS (
                 INSERT INTO rm_chat_messages (chat_id, seq, message_id, author, body, sent_at,
                                               edited_at, deleted)
                 SELECT chat_id, seq, message_id, author, body, sent_at, NULL, false FROM input),
             unread AS (
                 UPDATE rm_chat_members m
                    SET unread_count = m.unread_count + d.unread
                   FROM (SELECT r.chat_id, r.user_id, count(*) AS unread
                           FROM input n JOIN rm_chat_members r ON r.chat_id = n.chat_id
                          WHERE n.author <> r.user_id AND n.seq > r.read_up_to
                          GROUP BY r.chat_id, r.user_id) d
                  WHERE m.chat_id = d.chat_id AND m.user_id = d.user_id),
             newest AS (
                 SELECT DISTINCT ON (chat_id) chat_id, seq, preview, position
                   FROM input
                  ORDER BY chat_id, seq DESC)
             UPDATE rm_chats c
                SET last_message = CASE WHEN n.seq >= c.last_seq THEN n.preview::jsonb
                                        ELSE c.last_message END,
                    last_seq = GREATEST(c.last_seq, n.seq),
                    last_activity_position = GREATEST(c.last_activity_position, n.position)
               FROM newest n
              WHERE c.chat_id = n.chat_id",
        )
        .bind(&self.chat_ids)
        .bind(&self.seqs)
        .bind(&self.message_ids)
        .bind(&self.authors)
        .bind(&self.bodies)
        .bind(&self.sent_at)
        .bind(&self.positions)
        .bind(&self.previews)
        .execute(&mut *conn)
        .await?;
        *self = Self::default();
        Ok(())
    }
}

/// Sequence numbers start at 1 and grow by one per message, so they never
/// come near the top of `bigint`; saturating keeps the conversion total.
fn to_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The chat-list preview of a message, built in one place so the live path and
/// a recomputation after an edit or deletion produce identical JSON; `body`
/// is `null` for a message of attachments only.
fn last_message(
    id: Uuid,
    seq: i64,
    author: Uuid,
    body: Option<&str>,
    sent_at: DateTime<Utc>,
) -> Value {
    serde_json::json!({
        "id": id.to_string(),
        "seq": seq,
        "author": author.to_string(),
        "body": body,
        "sent_at": sent_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    })
}

/// A message's id, seq, author, text and time, as its preview shows them.
type Preview = (Uuid, i64, Uuid, Option<String>, DateTime<Utc>);

/// Points the chat's preview at its newest message that is still there.
async fn refresh_last_message(conn: &mut PgConnection, chat_id: Uuid) -> Result<(), sqlx::Error> {
    let newest: Option<Preview> = sqlx::query_as(
        "SELECT message_id, seq, author, body, sent_at FROM rm_chat_messages
          WHERE chat_id = $1 AND NOT deleted
          ORDER BY seq DESC LIMIT 1",
    )
    .bind(chat_id)
    .fetch_optional(&mut *conn)
    .await?;
    let preview = newest.map(|(id, seq, author, body, sent_at)| {
        last_message(id, seq, author, body.as_deref(), sent_at)
    });
    sqlx::query("UPDATE rm_chats SET last_message = $2 WHERE chat_id = $1")
        .bind(chat_id)
        .bind(preview)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The chat's members in joining order, and their names by id, as columns of
/// the surrounding query.
const MEMBERS: &str = "ARRAY(SELECT o.user_id FROM rm_chat_members o WHERE o.chat_id = c.chat_id
                              ORDER BY o.joined_position, o.join_index) AS members,
                       (SELECT coalesce(jsonb_object_agg(a.user_id, a.name), '{}')
                          FROM rm_chat_members o JOIN accounts a ON a.user_id = o.user_id
                         WHERE o.chat_id = c.chat_id) AS member_names";

/// The chats `user_id` belongs to, most recently active first.
pub async fn list_for_user<'c>(
    executor: impl PgExecutor<'c>,
    user_id: Uuid,
) -> Result<Vec<ChatSummary>, sqlx::Error> {
    sqlx::query_as::<_, ChatSummary>(&format!(
        "SELECT c.chat_id AS id, c.kind, c.title, {MEMBERS}, c.last_message, m.unread_count
           FROM rm_chat_members m JOIN rm_chats c ON c.chat_id = m.chat_id
          WHERE m.user_id = $1
          ORDER BY c.last_activity_position DESC, c.chat_id"
    ))
    .bind(user_id)
    .fetch_all(executor)
    .await
}

/// One chat, whoever asks; callers check visibility with its `members`.
pub async fn get<'c>(
    executor: impl PgExecutor<'c>,
    chat_id: Uuid,
) -> Result<Option<ChatDetails>, sqlx::Error> {
    sqlx::query_as::<_, ChatDetails>(&format!(
        "SELECT c.chat_id AS id, c.kind, c.title, c.created_by, c.created_at, {MEMBERS},
                c.last_message, c.version, {NAMES_VERSION}
           FROM rm_chats c
          WHERE c.chat_id = $1"
    ))
    .bind(chat_id)
    .fetch_optional(executor)
    .await
}

/// [`ChatAccess`] of the chat `$1` for the reader `$2`.
const ACCESS: &str = "SELECT m.user_id IS NOT NULL AS member, c.version
                        FROM rm_chats c
                        LEFT JOIN rm_chat_members m ON m.chat_id = c.chat_id AND m.user_id = $2
                       WHERE c.chat_id = $1";

/// Whether `user_id` currently belongs to the chat, and the chat's version;
/// `None` for an unknown chat.
pub async fn access<'c>(
    executor: impl PgExecutor<'c>,
    chat_id: Uuid,
    user_id: Uuid,
) -> Result<Option<ChatAccess>, sqlx::Error> {
    sqlx::query_as(ACCESS)
        .bind(chat_id)
        .bind(user_id)
        .fetch_optional(executor)
        .await
}

/// Up to `limit` messages of `$1` with `seq` below `$3`, newest first.
const MESSAGES: &str = "SELECT message_id AS id, seq, author, body, sent_at, edited_at, deleted,
                               CASE WHEN deleted THEN '[]'::jsonb ELSE coalesce(
                                 (SELECT jsonb_agg(jsonb_build_object(
                                           'id', a.attachment_id, 'filename', a.filename,
                                           'content_type', a.content_type, 'size', a.size,
                                           'thumbnail', a.thumbnail)
                                         ORDER BY a.place)
                                    FROM rm_chat_attachments a
                                   WHERE a.chat_id = x.chat_id AND a.seq = x.seq),
                                 '[]'::jsonb) END AS attachments
                          FROM rm_chat_messages x
                         WHERE chat_id = $1 AND seq < $3
                         ORDER BY seq DESC
                         LIMIT $4";

/// The attachment `attachment_id` of the chat `chat_id`, with whether a
/// message not deleted carries it; `None` when the chat has no such
/// attachment.
pub async fn attachment<'c>(
    executor: impl PgExecutor<'c>,
    chat_id: Uuid,
    attachment_id: Uuid,
) -> Result<Option<AttachmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.filename, a.content_type, a.size, a.announced_by,
                coalesce(NOT m.deleted, false) AS sent, a.thumbnail
           FROM rm_chat_attachments a
           LEFT JOIN rm_chat_messages m ON m.chat_id = a.chat_id AND m.seq = a.seq
          WHERE a.chat_id = $1 AND a.attachment_id = $2",
    )
    .bind(chat_id)
    .bind(attachment_id)
    .fetch_optional(executor)
    .await
}

/// Up to `limit` messages with `seq` below `before_seq` (all when `None`),
/// newest first, and whether `user_id` may read them ([`access`]); `None` for
/// an unknown chat. The next page starts before the last row's `seq`, which
/// stays stable however many messages arrive meanwhile. One statement: the
/// access and the page come from one snapshot.
pub async fn messages<'c>(
    executor: impl PgExecutor<'c>,
    chat_id: Uuid,
    user_id: Uuid,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Option<(ChatAccess, Vec<MessageRow>)>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT head.*, page.* FROM ({ACCESS}) head LEFT JOIN LATERAL ({MESSAGES}) page ON true"
    ))
    .bind(chat_id)
    .bind(user_id)
    .bind(before_seq.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(executor)
    .await?;
    crate::head_and_page(&rows)
}
