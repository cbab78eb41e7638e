//! The chats read model rebuilt from a whole log at once.
//!
//! The live path applies each entry with SQL that reads the tables it
//! changes: a message adds one unread for every member who has not read that
//! far, a read receipt recounts, a deletion takes one back. A rebuild from an
//! empty read model knows all of that already, so it keeps each chat in
//! memory instead (its members with their markers and counts, and for each
//! message only its author and whether it was deleted) and applies the same
//! arithmetic there, in the same order. Messages are written as they come, in
//! one binary `COPY`; edits and deletions, a few among many, are applied to
//! them in one statement at the end; then the chats and their members are
//! copied in. Memory grows with the chats and their messages, a few bytes a
//! message, not with their text.
//!
//! The rows are the ones the live path writes, which the tests that compare
//! a live read model with a rebuild check.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use domain::chat::ChatEvent;
use domain::values::ChatKind;
use herald_nats::log::copy::Rows;
use herald_nats::log::Stored;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{last_message, to_i64};
use crate::{decode_stored, rebuild, ApplyError};

/// The chats of the log read so far.
#[derive(Default)]
pub(crate) struct Fold {
    chats: HashMap<Uuid, Chat>,
    /// Messages edited or deleted after they were written: their final text,
    /// edit time and deletion, by chat and seq.
    changed: HashMap<(Uuid, i64), Change>,
    /// The attachments announced, by id.
    attachments: HashMap<Uuid, Attachment>,
}

/// An announced attachment as `rm_chat_attachments` holds it.
struct Attachment {
    chat_id: Uuid,
    filename: String,
    content_type: String,
    size: i64,
    announced_by: Uuid,
    announced_at: DateTime<Utc>,
    /// The seq of the message carrying it, and its place there.
    sent: Option<(i64, i32)>,
    thumbnail: bool,
}

/// One chat as the fold keeps it.
#[derive(Default)]
struct Chat {
    /// Its header, once the chat was created.
    created: Option<Created>,
    /// The position of its latest entry.
    version: i64,
    /// The position of its creation or its latest message.
    last_activity_position: i64,
    members: Vec<Member>,
    /// Everyone who wrote in the chat, so a message keeps an index, not an id.
    authors: Vec<Uuid>,
    /// The messages in seq order.
    messages: Vec<Message>,
    /// The message with the highest seq, as its preview shows it.
    newest: Option<Newest>,
}

struct Created {
    kind: ChatKind,
    title: Option<String>,
    created_by: Uuid,
    created_at: DateTime<Utc>,
}

struct Member {
    user_id: Uuid,
    read_up_to: i64,
    unread_count: i64,
    joined_position: i64,
    join_index: i32,
}

#[derive(Clone, Copy)]
struct Message {
    seq: i64,
    /// Its author's place in [`Chat::authors`].
    author: u32,
    deleted: bool,
}

struct Newest {
    id: Uuid,
    seq: i64,
    author: Uuid,
    body: Option<String>,
    sent_at: DateTime<Utc>,
    deleted: bool,
}

/// A message's columns that change after it is written.
#[derive(Default)]
struct Change {
    body: Option<String>,
    edited_at: Option<DateTime<Utc>>,
    deleted: bool,
}

impl rebuild::Fold for Fold {
    const STREAMED: Option<&'static str> = Some(
        "COPY rm_chat_messages (chat_id, seq, message_id, author, body, sent_at, edited_at, deleted)
         FROM STDIN (FORMAT binary)",
    );

    /// Folds a chat entry in, streaming the message it sends, if it does.
    fn entry(
        &mut self,
        entry: &Stored<'_>,
        chat_id: Uuid,
        rows: &mut Rows,
    ) -> Result<(), ApplyError> {
        self.apply(chat_id, entry.position, decode_stored(entry)?, rows)
    }

    /// Writes what the fold holds beside the messages already copied: the
    /// edits and deletions, then the chats with their previews, then the
    /// members.
    async fn finish(self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        write_changes(conn, self.changed).await?;
        // A chat whose newest message was deleted shows the newest one left,
        // which only the messages table knows now.
        let retracted: Vec<Uuid> = self
            .chats
            .iter()
            .filter(|(_, chat)| chat.newest.as_ref().is_some_and(|newest| newest.deleted))
            .map(|(chat_id, _)| *chat_id)
            .collect();
        let mut previews = newest_left(conn, &retracted).await?;
        let mut chats = Rows::new();
        let mut members = Rows::new();
        for (chat_id, chat) in &self.chats {
            for member in &chat.members {
                members
                    .row(6)
                    .uuid(chat_id.as_bytes())
                    .uuid(member.user_id.as_bytes())
                    .int8(member.read_up_to)
                    .int8(member.unread_count)
                    .int8(member.joined_position)
                    .int4(member.join_index);
            }
            let Some(created) = &chat.created else {
                continue;
            };
            let preview = match &chat.newest {
                Some(newest) if newest.deleted => previews.remove(chat_id),
                Some(newest) => Some(
                    last_message(
                        newest.id,
                        newest.seq,
                        newest.author,
                        newest.body.as_deref(),
                        newest.sent_at,
                    )
                    .to_string(),
                ),
                None => None,
            };
            chats
                .row(9)
                .uuid(chat_id.as_bytes())
                .text(Some(created.kind.as_str()))
                .text(created.title.as_deref())
                .uuid(created.created_by.as_bytes())
                .timestamptz(Some(created.created_at))
                .int8(chat.last_seq())
                .jsonb(preview.as_deref())
                .int8(chat.last_activity_position)
                .int8(chat.version);
        }
        chats
            .copy_into(
                conn,
                "COPY rm_chats (chat_id, kind, title, created_by, created_at, last_seq,
                                last_message, last_activity_position, version)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        members
            .copy_into(
                conn,
                "COPY rm_chat_members (chat_id, user_id, read_up_to, unread_count,
                                       joined_position, join_index)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut attachments = Rows::new();
        for (attachment_id, attachment) in &self.attachments {
            let row = attachments
                .row(10)
                .uuid(attachment_id.as_bytes())
                .uuid(attachment.chat_id.as_bytes())
                .text(Some(&attachment.filename))
                .text(Some(&attachment.content_type))
                .int8(attachment.size)
                .uuid(attachment.announced_by.as_bytes())
                .timestamptz(Some(attachment.announced_at));
            match attachment.sent {
                Some((seq, place)) => row.int8(seq).int4(place),
                None => row.null().null(),
            }
            .bool(attachment.thumbnail);
        }
        attachments
            .copy_into(
                conn,
                "COPY rm_chat_attachments (attachment_id, chat_id, filename, content_type, size,
                                           announced_by, announced_at, seq, place, thumbnail)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        Ok(())
    }
}

impl Fold {
    fn apply(
        &mut self,
        chat_id: Uuid,
        position: i64,
        event: ChatEvent,
        rows: &mut Rows,
    ) -> Result<(), ApplyError> {
        let chat = self.chats.entry(chat_id).or_default();
        chat.version = chat.version.max(position);
        match event {
            ChatEvent::ChatCreated {
                kind,
                title,
                members,
                created_by,
                created_at,
                ..
            } => {
                if chat.created.is_some() {
                    return Err(ApplyError::Duplicate {
                        position,
                        row: format!("chat {chat_id}"),
                    });
                }
                chat.created = Some(Created {
                    kind,
                    title: title.map(String::from),
                    created_by,
                    created_at,
                });
                chat.last_activity_position = position;
                for (index, user_id) in members.into_iter().enumerate() {
                    chat.join(
                        user_id,
                        0,
                        position,
                        i32::try_from(index + 1).unwrap_or(i32::MAX),
                    )?;
                }
            }
            ChatEvent::MemberAdded { user_id, .. } => {
                let unread = chat.count_unread(user_id, 0);
                chat.join(user_id, unread, position, 0)?;
            }
            ChatEvent::MemberRemoved { user_id, .. } => {
                chat.members.retain(|member| member.user_id != user_id);
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
                let attachment = Attachment {
                    chat_id,
                    filename: filename.into(),
                    content_type: content_type.into(),
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    announced_by,
                    announced_at: at,
                    sent: None,
                    thumbnail: false,
                };
                if self.attachments.insert(attachment_id, attachment).is_some() {
                    return Err(ApplyError::Duplicate {
                        position,
                        row: format!("the attachment {attachment_id}"),
                    });
                }
            }
            ChatEvent::MessageSent {
                message_id,
                seq,
                author,
                body,
                attachments,
                sent_at,
            } => {
                let seq = to_i64(seq);
                for (index, attachment_id) in attachments.iter().enumerate() {
                    if let Some(attachment) = self
                        .attachments
                        .get_mut(attachment_id)
                        .filter(|attachment| attachment.chat_id == chat_id)
                    {
                        let place = i32::try_from(index + 1).unwrap_or(i32::MAX);
                        attachment.sent = Some((seq, place));
                    }
                }
                // Postgres keeps microseconds, and the preview shows what it keeps.
                let sent_at = sent_at.trunc_subsecs(6);
                let body = body.map(String::from);
                rows.row(8)
                    .uuid(chat_id.as_bytes())
                    .int8(seq)
                    .uuid(message_id.as_bytes())
                    .uuid(author.as_bytes())
                    .text(body.as_deref())
                    .timestamptz(Some(sent_at))
                    .null()
                    .bool(false);
                chat.send(seq, author, position);
                if chat.newest.as_ref().is_none_or(|newest| seq >= newest.seq) {
                    chat.newest = Some(Newest {
                        id: message_id,
                        seq,
                        author,
                        body,
                        sent_at,
                        deleted: false,
                    });
                }
            }
            ChatEvent::MessageEdited {
                seq,
                body,
                edited_at,
                ..
            } => {
                let seq = to_i64(seq);
                if chat.message(seq).is_some_and(|message| !message.deleted) {
                    let body = String::from(body);
                    if let Some(newest) = chat.newest.as_mut().filter(|newest| newest.seq == seq) {
                        newest.body = Some(body.clone());
                    }
                    let change = self.changed.entry((chat_id, seq)).or_default();
                    change.body = Some(body);
                    change.edited_at = Some(edited_at);
                }
            }
            ChatEvent::MessageDeleted { seq, .. } => {
                let seq = to_i64(seq);
                if chat.retract(seq) {
                    if let Some(newest) = chat.newest.as_mut().filter(|newest| newest.seq == seq) {
                        newest.deleted = true;
                    }
                    let change = self.changed.entry((chat_id, seq)).or_default();
                    change.body = None;
                    change.deleted = true;
                }
            }
            ChatEvent::UnreadReminded { .. } | ChatEvent::AttachmentExpired { .. } => {}
            ChatEvent::ThumbnailRecorded { attachment_id, .. } => {
                if let Some(attachment) = self
                    .attachments
                    .get_mut(&attachment_id)
                    .filter(|attachment| attachment.chat_id == chat_id)
                {
                    attachment.thumbnail = true;
                }
            }
            ChatEvent::ReadUpTo {
                user_id, up_to_seq, ..
            } => {
                let up_to = to_i64(up_to_seq);
                if let Some(index) = chat.member(user_id) {
                    let read_up_to = chat.members[index].read_up_to.max(up_to);
                    let unread = chat.count_unread(user_id, read_up_to);
                    let member = &mut chat.members[index];
                    member.read_up_to = read_up_to;
                    member.unread_count = unread;
                }
            }
        }
        Ok(())
    }
}

impl Chat {
    fn member(&self, user_id: Uuid) -> Option<usize> {
        self.members
            .iter()
            .position(|member| member.user_id == user_id)
    }

    /// Someone joins with nothing read; joining twice is a row the read
    /// model already holds, as the live path's insert finds.
    fn join(
        &mut self,
        user_id: Uuid,
        unread_count: i64,
        joined_position: i64,
        join_index: i32,
    ) -> Result<(), ApplyError> {
        if self.member(user_id).is_some() {
            return Err(ApplyError::Duplicate {
                position: joined_position,
                row: format!("the chat member {user_id}"),
            });
        }
        self.members.push(Member {
            user_id,
            read_up_to: 0,
            unread_count,
            joined_position,
            join_index,
        });
        Ok(())
    }

    fn author_index(&mut self, author: Uuid) -> u32 {
        match self.authors.iter().position(|known| *known == author) {
            Some(index) => index as u32,
            None => {
                self.authors.push(author);
                (self.authors.len() - 1) as u32
            }
        }
    }

    /// A new message: one more unread for every member but its author who
    /// has not read that far.
    fn send(&mut self, seq: i64, author: Uuid, position: i64) {
        let index = self.author_index(author);
        let at = self.messages.partition_point(|message| message.seq < seq);
        self.messages.insert(
            at,
            Message {
                seq,
                author: index,
                deleted: false,
            },
        );
        for member in &mut self.members {
            if member.user_id != author && seq > member.read_up_to {
                member.unread_count += 1;
            }
        }
        if self.created.is_some() {
            self.last_activity_position = self.last_activity_position.max(position);
        }
    }

    fn message(&self, seq: i64) -> Option<&Message> {
        let at = self.messages.partition_point(|message| message.seq < seq);
        self.messages.get(at).filter(|message| message.seq == seq)
    }

    /// Marks a message deleted, taking its unread back from the members who
    /// had not read it; `false` when there is no such message left.
    fn retract(&mut self, seq: i64) -> bool {
        let at = self.messages.partition_point(|message| message.seq < seq);
        let Some(message) = self
            .messages
            .get_mut(at)
            .filter(|message| message.seq == seq && !message.deleted)
        else {
            return false;
        };
        message.deleted = true;
        let author = self.authors[message.author as usize];
        for member in &mut self.members {
            if member.user_id != author && member.read_up_to < seq && member.unread_count > 0 {
                member.unread_count -= 1;
            }
        }
        true
    }

    /// Messages after `read_up_to`, not deleted, that someone else wrote.
    fn count_unread(&self, user_id: Uuid, read_up_to: i64) -> i64 {
        let from = self
            .messages
            .partition_point(|message| message.seq <= read_up_to);
        self.messages[from..]
            .iter()
            .filter(|message| !message.deleted && self.authors[message.author as usize] != user_id)
            .count() as i64
    }

    fn last_seq(&self) -> i64 {
        self.messages.last().map_or(0, |message| message.seq)
    }
}

/// Applies the edits and deletions to the copied messages in one statement.
async fn write_changes(
    conn: &mut PgConnection,
    changed: HashMap<(Uuid, i64), Change>,
) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let mut chat_ids = Vec::with_capacity(changed.len());
    let mut seqs = Vec::with_capacity(changed.len());
    let mut bodies = Vec::with_capacity(changed.len());
    let mut edited_at = Vec::with_capacity(changed.len());
    let mut deleted = Vec::with_capacity(changed.len());
    for ((chat_id, seq), change) in changed {
        chat_ids.push(chat_id);
        seqs.push(seq);
        bodies.push(change.body);
        edited_at.push(change.edited_at);
        deleted.push(change.deleted);
    }
    sqlx::query(
        "UPDATE rm_chat_messages m
            SET body = c.body, edited_at = c.edited_at, deleted = c.deleted
           FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::boolean[])
                AS c (chat_id, seq, body, edited_at, deleted)
          WHERE m.chat_id = c.chat_id AND m.seq = c.seq",
    )
    .bind(chat_ids)
    .bind(seqs)
    .bind(bodies)
    .bind(edited_at)
    .bind(deleted)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A chat's id, then its newest message's id, seq, author, text and time.
type ChatPreview = (Uuid, Uuid, i64, Uuid, Option<String>, DateTime<Utc>);

/// The preview of each chat's newest message not deleted, by chat.
async fn newest_left(
    conn: &mut PgConnection,
    chat_ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    if chat_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<ChatPreview> = sqlx::query_as(
        "SELECT DISTINCT ON (chat_id) chat_id, message_id, seq, author, body, sent_at
           FROM rm_chat_messages
          WHERE chat_id = ANY($1) AND NOT deleted
          ORDER BY chat_id, seq DESC",
    )
    .bind(chat_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(chat_id, id, seq, author, body, sent_at)| {
            (
                chat_id,
                last_message(id, seq, author, body.as_deref(), sent_at).to_string(),
            )
        })
        .collect())
}
