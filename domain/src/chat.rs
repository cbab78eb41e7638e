//! Conversations between patients, doctors and staff.
//!
//! A chat is one aggregate that orders its own messages with a contiguous
//! sequence number, so clients can detect gaps and read markers are a single
//! integer per member.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::attachment::{
    AttachmentLimits, ContentType, FileName, Observed, Sha256, MAX_ATTACHMENTS_PER_MESSAGE,
};
use crate::error::{DomainError, Permission, ValidationError};
use crate::user::Named;
use crate::values::{Actor, ChatKind, ChatTitle, MessageBody, Role};

/// Most people a group chat may hold, to bound fan-out of every message.
pub const MAX_GROUP_MEMBERS: usize = 256;

/// What someone asks a chat to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatCommand {
    /// Open a new chat; the creator joins it unless Herald itself creates it.
    Create {
        /// Who asks.
        actor: Actor,
        /// Caller-chosen id, so retries are detectable.
        chat_id: Uuid,
        /// Direct or group.
        kind: ChatKind,
        /// Optional display name.
        title: Option<ChatTitle>,
        /// Other people to include besides the creator, each an active user.
        members: Vec<Named>,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Bring someone into a group chat.
    AddMember {
        /// Who asks.
        actor: Actor,
        /// Who joins: an active user.
        user: Named,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Take someone out of a group chat (or leave it).
    RemoveMember {
        /// Who asks.
        actor: Actor,
        /// Who leaves.
        user_id: Uuid,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Announce a file a member is about to upload, so that a message may
    /// carry it once its bytes are stored.
    AnnounceAttachment {
        /// Who asks; only they may send it.
        actor: Actor,
        /// Herald-chosen id, which names the stored object too.
        attachment_id: Uuid,
        /// The file's name, sanitised.
        filename: FileName,
        /// Its media type.
        content_type: ContentType,
        /// How many bytes it has.
        size: u64,
        /// The SHA-256 of its bytes.
        sha256: Sha256,
        /// What the deployment accepts.
        limits: AttachmentLimits,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Record that an image attachment's thumbnail is stored beside it.
    RecordThumbnail {
        /// Who asks: Herald itself, which made it.
        actor: Actor,
        /// The attachment.
        attachment_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Give up an upload no message carried in time, before its bytes are
    /// deleted, so that no message can carry it afterwards.
    ExpireAttachment {
        /// Who asks: Herald itself, which sweeps unused uploads.
        actor: Actor,
        /// The attachment.
        attachment_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Post a new message.
    SendMessage {
        /// Who asks; becomes the author.
        actor: Actor,
        /// Caller-chosen id, so retries are detectable.
        message_id: Uuid,
        /// The text; a message carrying attachments may have none.
        body: Option<MessageBody>,
        /// The attachments it carries, each with what the object store
        /// holds for it.
        attachments: Vec<Observed>,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Replace the text of one's own message.
    EditMessage {
        /// Who asks.
        actor: Actor,
        /// The message to change.
        message_id: Uuid,
        /// The new text.
        body: MessageBody,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Retract a message.
    DeleteMessage {
        /// Who asks.
        actor: Actor,
        /// The message to retract.
        message_id: Uuid,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Record that the actor has read everything up to a sequence number.
    MarkRead {
        /// Who asks; the marker is theirs.
        actor: Actor,
        /// Highest sequence number read.
        up_to_seq: u64,
        /// When the request was made.
        at: DateTime<Utc>,
    },
    /// Remind every member of the messages others sent up to a sequence
    /// number that they have neither read nor been reminded of.
    RemindUnread {
        /// Who asks: Herald itself, once the messages have waited long enough.
        actor: Actor,
        /// The newest message to remind of.
        through_seq: u64,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What happened in a chat, as stored and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatEvent {
    /// The chat was opened.
    ChatCreated {
        /// The chat's id.
        chat_id: Uuid,
        /// Direct or group.
        kind: ChatKind,
        /// Optional display name.
        title: Option<ChatTitle>,
        /// Initial members, creator first.
        members: Vec<Uuid>,
        /// Who opened it.
        created_by: Uuid,
        /// When.
        created_at: DateTime<Utc>,
    },
    /// Someone joined a group chat.
    MemberAdded {
        /// Who joined.
        user_id: Uuid,
        /// Who added them.
        added_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Someone left or was removed from a group chat.
    MemberRemoved {
        /// Who left.
        user_id: Uuid,
        /// Who removed them (themself when leaving).
        removed_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// A member announced a file they are about to upload.
    AttachmentAnnounced {
        /// The attachment's id.
        attachment_id: Uuid,
        /// The file's name, sanitised.
        filename: FileName,
        /// Its media type.
        content_type: ContentType,
        /// How many bytes it has.
        size: u64,
        /// The SHA-256 of its bytes.
        sha256: Sha256,
        /// Who announced it.
        announced_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// An upload no message carried was given up; its bytes are deleted.
    AttachmentExpired {
        /// The attachment.
        attachment_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// An image attachment's thumbnail was stored beside it.
    ThumbnailRecorded {
        /// The attachment.
        attachment_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// A message was posted.
    MessageSent {
        /// The message's id.
        message_id: Uuid,
        /// Its position in the chat, starting at 1 with no gaps.
        seq: u64,
        /// Who wrote it.
        author: Uuid,
        /// The text, verbatim; absent from a message of attachments only.
        /// Written the same as before attachments existed whenever there is
        /// text and no attachment, so earlier entries need no upcasting.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<MessageBody>,
        /// The attachments it carries, in the order the author gave them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Uuid>,
        /// When.
        sent_at: DateTime<Utc>,
    },
    /// A message's text was replaced.
    MessageEdited {
        /// The message's id.
        message_id: Uuid,
        /// Its position, so readers need not look it up.
        seq: u64,
        /// The new text.
        body: MessageBody,
        /// Who edited it.
        edited_by: Uuid,
        /// When.
        edited_at: DateTime<Utc>,
    },
    /// A message was retracted.
    MessageDeleted {
        /// The message's id.
        message_id: Uuid,
        /// Its position, so readers need not look it up.
        seq: u64,
        /// Who deleted it.
        deleted_by: Uuid,
        /// When.
        deleted_at: DateTime<Utc>,
    },
    /// A member's read marker moved forward.
    ReadUpTo {
        /// Whose marker.
        user_id: Uuid,
        /// Highest sequence number read.
        up_to_seq: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Members were reminded of messages they had not read.
    UnreadReminded {
        /// One reminder per member who had unread messages from others.
        reminders: Vec<UnreadReminder>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// One member's reminder of the messages they had not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadReminder {
    /// Who is reminded.
    pub user_id: Uuid,
    /// The newest message it covers.
    pub up_to_seq: u64,
    /// How many messages from others, not deleted, it covers.
    pub messages: u64,
}

impl ChatEvent {
    /// Who this event brings into its chat.
    pub fn joining(&self) -> &[Uuid] {
        match self {
            Self::ChatCreated { members, .. } => members,
            Self::MemberAdded { user_id, .. } => std::slice::from_ref(user_id),
            _ => &[],
        }
    }

    /// Who this event takes out of its chat.
    pub fn leaving(&self) -> Option<Uuid> {
        match self {
            Self::MemberRemoved { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }

    /// The chat's members after this event, given those before it.
    pub fn apply_to_members(&self, members: &mut HashSet<Uuid>) {
        members.extend(self.joining());
        if let Some(user) = self.leaving() {
            members.remove(&user);
        }
    }
}

impl DomainEvent for ChatEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ChatCreated { .. } => "ChatCreated",
            Self::MemberAdded { .. } => "MemberAdded",
            Self::MemberRemoved { .. } => "MemberRemoved",
            Self::AttachmentAnnounced { .. } => "AttachmentAnnounced",
            Self::AttachmentExpired { .. } => "AttachmentExpired",
            Self::ThumbnailRecorded { .. } => "ThumbnailRecorded",
            Self::MessageSent { .. } => "MessageSent",
            Self::MessageEdited { .. } => "MessageEdited",
            Self::MessageDeleted { .. } => "MessageDeleted",
            Self::ReadUpTo { .. } => "ReadUpTo",
            Self::UnreadReminded { .. } => "UnreadReminded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// The little the chat must remember about each message to decide on edits
/// and deletions; short field names keep snapshots of long chats small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct MessageInfo {
    #[serde(rename = "a")]
    author: Uuid,
    #[serde(rename = "s")]
    seq: u64,
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// What the chat remembers of an announced attachment to decide whether a
/// message may carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AttachmentInfo {
    #[serde(rename = "b")]
    announced_by: Uuid,
    #[serde(rename = "n")]
    size: u64,
    #[serde(rename = "h")]
    sha256: Sha256,
    #[serde(rename = "u", default, skip_serializing_if = "std::ops::Not::not")]
    used: bool,
    /// Whether it is an image, of which Herald makes a thumbnail.
    #[serde(rename = "i", default, skip_serializing_if = "std::ops::Not::not")]
    image: bool,
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    thumbnail: bool,
    /// Whether it was given up, no message having carried it in time.
    #[serde(rename = "x", default, skip_serializing_if = "std::ops::Not::not")]
    expired: bool,
}

/// A conversation's decision state: membership, message ownership and read
/// markers, but no message text, since decisions never need it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    kind: Option<ChatKind>,
    title: Option<ChatTitle>,
    members: Vec<Uuid>,
    last_seq: u64,
    messages: HashMap<Uuid, MessageInfo>,
    read: HashMap<Uuid, u64>,
    /// The newest message each member was reminded of.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    reminded: HashMap<Uuid, u64>,
    /// The attachments announced in the chat.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    attachments: HashMap<Uuid, AttachmentInfo>,
}

impl Chat {
    /// Whether the chat has been created.
    pub fn exists(&self) -> bool {
        self.kind.is_some()
    }

    /// Direct or group, once created.
    pub fn kind(&self) -> Option<ChatKind> {
        self.kind
    }

    /// The display name, if one was given.
    pub fn title(&self) -> Option<&ChatTitle> {
        self.title.as_ref()
    }

    /// Current members in the order they joined.
    pub fn members(&self) -> &[Uuid] {
        &self.members
    }

    /// Whether the user currently belongs to the chat.
    pub fn is_member(&self, user_id: Uuid) -> bool {
        self.members.contains(&user_id)
    }

    /// Sequence number of the latest message, 0 when there is none.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The member's read marker, 0 when they have read nothing.
    pub fn read_up_to(&self, user_id: Uuid) -> u64 {
        self.read.get(&user_id).copied().unwrap_or(0)
    }

    /// Whether a message carries the attachment, an image with no thumbnail
    /// recorded yet.
    pub fn needs_thumbnail(&self, attachment_id: Uuid) -> bool {
        self.attachments
            .get(&attachment_id)
            .is_some_and(|info| info.used && info.image && !info.thumbnail)
    }

    /// Decides what a command means for this chat without changing it, so the
    /// rules can be exercised without any infrastructure.
    pub fn decide(&self, command: ChatCommand) -> Result<Vec<ChatEvent>, DomainError> {
        if let ChatCommand::Create {
            actor,
            chat_id,
            kind,
            title,
            members,
            at,
        } = command
        {
            return self.create(actor, chat_id, kind, title, members, at);
        }
        let kind = self.kind.ok_or(DomainError::ChatNotFound)?;
        match command {
            ChatCommand::Create { .. } => Err(DomainError::ChatAlreadyExists),
            ChatCommand::AddMember { actor, user, at } => {
                let user_id = user.user_id;
                if kind == ChatKind::Direct {
                    return Err(DomainError::DirectChatMembersAreFixed);
                }
                if !actor.is_admin() && !self.is_member(actor.user_id) {
                    return Err(Permission::OnlyMembersMayAddMembers.into());
                }
                if !user.is_active() {
                    return Err(
                        ValidationError::new("user_id", "no active user has this id").into(),
                    );
                }
                if self.is_member(user_id) {
                    return Err(DomainError::AlreadyAMember);
                }
                if self.members.len() >= MAX_GROUP_MEMBERS {
                    return Err(ValidationError::new(
                        "user_id",
                        format!("the chat already has the maximum of {MAX_GROUP_MEMBERS} members"),
                    )
                    .into());
                }
                Ok(vec![ChatEvent::MemberAdded {
                    user_id,
                    added_by: actor.user_id,
                    at,
                }])
            }
            ChatCommand::RemoveMember { actor, user_id, at } => {
                if !actor.is_admin() && actor.user_id != user_id {
                    return Err(Permission::OnlyTheMemberOrAnAdminMayRemove.into());
                }
                if kind == ChatKind::Direct {
                    return Err(DomainError::DirectChatMembersAreFixed);
                }
                if !self.is_member(user_id) {
                    return Err(DomainError::NotAMember);
                }
                Ok(vec![ChatEvent::MemberRemoved {
                    user_id,
                    removed_by: actor.user_id,
                    at,
                }])
            }
            ChatCommand::AnnounceAttachment {
                actor,
                attachment_id,
                filename,
                content_type,
                size,
                sha256,
                limits,
                at,
            } => {
                if !self.is_member(actor.user_id) {
                    return Err(Permission::OnlyMembersMayAttachFiles.into());
                }
                limits.check(&content_type, size)?;
                if self.attachments.contains_key(&attachment_id) {
                    return Err(DomainError::AttachmentAlreadyExists);
                }
                Ok(vec![ChatEvent::AttachmentAnnounced {
                    attachment_id,
                    filename,
                    content_type,
                    size,
                    sha256,
                    announced_by: actor.user_id,
                    at,
                }])
            }
            ChatCommand::RecordThumbnail {
                actor,
                attachment_id,
                at,
            } => {
                if actor.role != Role::System {
                    return Err(Permission::OnlyHeraldRecordsThumbnails.into());
                }
                if !self.needs_thumbnail(attachment_id) {
                    return Ok(vec![]);
                }
                Ok(vec![ChatEvent::ThumbnailRecorded { attachment_id, at }])
            }
            ChatCommand::ExpireAttachment {
                actor,
                attachment_id,
                at,
            } => {
                if actor.role != Role::System {
                    return Err(Permission::OnlyHeraldExpiresAttachments.into());
                }
                match self.attachments.get(&attachment_id) {
                    Some(info) if info.used => Err(DomainError::AttachmentInUse),
                    Some(info) if !info.expired => {
                        Ok(vec![ChatEvent::AttachmentExpired { attachment_id, at }])
                    }
                    _ => Ok(vec![]),
                }
            }
            ChatCommand::SendMessage {
                actor,
                message_id,
                body,
                attachments,
                at,
            } => {
                if !self.is_member(actor.user_id) {
                    return Err(Permission::OnlyMembersMaySendMessages.into());
                }
                if self.messages.contains_key(&message_id) {
                    return Err(DomainError::MessageAlreadyExists);
                }
                if body.is_none() && attachments.is_empty() {
                    return Err(ValidationError::new(
                        "body",
                        "must not be empty unless the message carries attachments",
                    )
                    .into());
                }
                let attachments = self.attachable(actor, attachments)?;
                Ok(vec![ChatEvent::MessageSent {
                    message_id,
                    seq: self.last_seq + 1,
                    author: actor.user_id,
                    body,
                    attachments,
                    sent_at: at,
                }])
            }
            ChatCommand::EditMessage {
                actor,
                message_id,
                body,
                at,
            } => {
                let message = self.message(message_id)?;
                if message.author != actor.user_id {
                    return Err(Permission::OnlyTheAuthorMayEdit.into());
                }
                if !self.is_member(actor.user_id) {
                    return Err(Permission::OnlyMembersMayEdit.into());
                }
                if message.deleted {
                    return Err(DomainError::MessageAlreadyDeleted);
                }
                Ok(vec![ChatEvent::MessageEdited {
                    message_id,
                    seq: message.seq,
                    body,
                    edited_by: actor.user_id,
                    edited_at: at,
                }])
            }
            ChatCommand::DeleteMessage {
                actor,
                message_id,
                at,
            } => {
                let message = self.message(message_id)?;
                if message.author != actor.user_id && !actor.is_admin() {
                    return Err(Permission::OnlyTheAuthorOrAnAdminMayDelete.into());
                }
                if message.deleted {
                    return Err(DomainError::MessageAlreadyDeleted);
                }
                Ok(vec![ChatEvent::MessageDeleted {
                    message_id,
                    seq: message.seq,
                    deleted_by: actor.user_id,
                    deleted_at: at,
                }])
            }
            ChatCommand::MarkRead {
                actor,
                up_to_seq,
                at,
            } => {
                if !self.is_member(actor.user_id) {
                    return Err(Permission::OnlyMembersMayMarkRead.into());
                }
                if up_to_seq > self.last_seq {
                    return Err(ValidationError::new(
                        "up_to_seq",
                        "must not be beyond the latest message",
                    )
                    .into());
                }
                if up_to_seq <= self.read_up_to(actor.user_id) {
                    return Ok(vec![]);
                }
                Ok(vec![ChatEvent::ReadUpTo {
                    user_id: actor.user_id,
                    up_to_seq,
                    at,
                }])
            }
            ChatCommand::RemindUnread {
                actor,
                through_seq,
                at,
            } => {
                if actor.role != Role::System {
                    return Err(Permission::OnlyHeraldReminds.into());
                }
                let reminders = self.unread_reminders(through_seq.min(self.last_seq));
                if reminders.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![ChatEvent::UnreadReminded { reminders, at }])
            }
        }
    }

    /// The ids of the attachments a message of `actor` is to carry, once
    /// each is known to be theirs, in this chat, not carried by another
    /// message, and stored with the size and digest announced.
    fn attachable(&self, actor: Actor, observed: Vec<Observed>) -> Result<Vec<Uuid>, DomainError> {
        let refuse = |message: String| ValidationError::new("attachments", message).into();
        if observed.len() > MAX_ATTACHMENTS_PER_MESSAGE {
            return Err(refuse(format!(
                "a message carries at most {MAX_ATTACHMENTS_PER_MESSAGE} attachments"
            )));
        }
        let mut ids = Vec::with_capacity(observed.len());
        for Observed {
            attachment_id,
            stored,
        } in observed
        {
            let Some(info) = self
                .attachments
                .get(&attachment_id)
                .filter(|info| info.announced_by == actor.user_id)
            else {
                return Err(refuse(format!(
                    "{attachment_id} is not an attachment you announced in this chat"
                )));
            };
            if info.used || ids.contains(&attachment_id) {
                return Err(refuse(format!(
                    "{attachment_id} is already carried by a message"
                )));
            }
            if info.expired {
                return Err(refuse(format!(
                    "{attachment_id} was deleted: no message carried it in time"
                )));
            }
            match stored {
                None => {
                    return Err(refuse(format!("{attachment_id} has not been uploaded")));
                }
                Some((size, sha256)) if size != info.size || sha256 != info.sha256 => {
                    return Err(refuse(format!(
                        "the bytes uploaded for {attachment_id} do not match the size and \
                         SHA-256 announced"
                    )));
                }
                Some(_) => ids.push(attachment_id),
            }
        }
        Ok(ids)
    }

    /// Each member's reminder of the messages from others up to
    /// `through_seq` that they have neither read nor been reminded of.
    fn unread_reminders(&self, through_seq: u64) -> Vec<UnreadReminder> {
        let mut pending: Vec<(Uuid, u64, u64)> = self
            .members
            .iter()
            .map(|&user| {
                let reminded = self.reminded.get(&user).copied().unwrap_or(0);
                (user, self.read_up_to(user).max(reminded), 0)
            })
            .filter(|(_, after, _)| *after < through_seq)
            .collect();
        if !pending.is_empty() {
            for message in self.messages.values() {
                if message.deleted || message.seq > through_seq {
                    continue;
                }
                for (user, after, count) in &mut pending {
                    if message.author != *user && message.seq > *after {
                        *count += 1;
                    }
                }
            }
        }
        pending
            .into_iter()
            .filter(|(_, _, count)| *count > 0)
            .map(|(user_id, _, messages)| UnreadReminder {
                user_id,
                up_to_seq: through_seq,
                messages,
            })
            .collect()
    }

    fn create(
        &self,
        actor: Actor,
        chat_id: Uuid,
        kind: ChatKind,
        title: Option<ChatTitle>,
        requested: Vec<Named>,
        at: DateTime<Utc>,
    ) -> Result<Vec<ChatEvent>, DomainError> {
        if self.exists() {
            return Err(DomainError::ChatAlreadyExists);
        }
        if actor.role == Role::Auditor {
            return Err(Permission::AuditorsCannotCreateChats.into());
        }
        // Herald's own actor is not a person, so it never joins the chats it
        // opens on people's behalf.
        let creator = (actor.role != Role::System).then_some(actor.user_id);
        if let Some(stranger) = requested.iter().find(|named| !named.is_active()) {
            return Err(ValidationError::new(
                "members",
                format!("{} is not an active user", stranger.user_id),
            )
            .into());
        }
        let mut members: Vec<Uuid> = Vec::with_capacity(requested.len() + 1);
        for user_id in creator
            .into_iter()
            .chain(requested.iter().map(|named| named.user_id))
        {
            if !members.contains(&user_id) {
                members.push(user_id);
            }
        }
        match kind {
            ChatKind::Direct if members.len() != 2 => {
                return Err(ValidationError::new(
                    "members",
                    "a direct chat must have exactly two distinct members",
                )
                .into());
            }
            ChatKind::Group if members.is_empty() || members.len() > MAX_GROUP_MEMBERS => {
                return Err(ValidationError::new(
                    "members",
                    format!("a group chat must have between 1 and {MAX_GROUP_MEMBERS} members"),
                )
                .into());
            }
            _ => {}
        }
        Ok(vec![ChatEvent::ChatCreated {
            chat_id,
            kind,
            title,
            members,
            created_by: actor.user_id,
            created_at: at,
        }])
    }

    fn message(&self, message_id: Uuid) -> Result<MessageInfo, DomainError> {
        self.messages
            .get(&message_id)
            .copied()
            .ok_or(DomainError::MessageNotFound)
    }
}

impl Aggregate for Chat {
    const TYPE: &'static str = "Chat";
    type Command = ChatCommand;
    type Event = ChatEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ChatEvent::ChatCreated {
                kind,
                title,
                members,
                ..
            } => {
                self.kind = Some(kind);
                self.title = title;
                self.members = members;
            }
            ChatEvent::MemberAdded { user_id, .. } => {
                if !self.members.contains(&user_id) {
                    self.members.push(user_id);
                }
            }
            ChatEvent::MemberRemoved { user_id, .. } => {
                self.members.retain(|member| *member != user_id);
                self.read.remove(&user_id);
                self.reminded.remove(&user_id);
            }
            ChatEvent::AttachmentAnnounced {
                attachment_id,
                content_type,
                size,
                sha256,
                announced_by,
                ..
            } => {
                self.attachments.insert(
                    attachment_id,
                    AttachmentInfo {
                        announced_by,
                        size,
                        sha256,
                        used: false,
                        image: content_type.is_image(),
                        thumbnail: false,
                        expired: false,
                    },
                );
            }
            ChatEvent::AttachmentExpired { attachment_id, .. } => {
                if let Some(info) = self.attachments.get_mut(&attachment_id) {
                    info.expired = true;
                }
            }
            ChatEvent::ThumbnailRecorded { attachment_id, .. } => {
                if let Some(info) = self.attachments.get_mut(&attachment_id) {
                    info.thumbnail = true;
                }
            }
            ChatEvent::MessageSent {
                message_id,
                seq,
                author,
                attachments,
                ..
            } => {
                for attachment_id in attachments {
                    if let Some(info) = self.attachments.get_mut(&attachment_id) {
                        info.used = true;
                    }
                }
                self.last_seq = self.last_seq.max(seq);
                self.messages.insert(
                    message_id,
                    MessageInfo {
                        author,
                        seq,
                        deleted: false,
                    },
                );
            }
            ChatEvent::MessageEdited { .. } => {}
            ChatEvent::MessageDeleted { message_id, .. } => {
                if let Some(message) = self.messages.get_mut(&message_id) {
                    message.deleted = true;
                }
            }
            ChatEvent::ReadUpTo {
                user_id, up_to_seq, ..
            } => {
                let marker = self.read.entry(user_id).or_insert(0);
                *marker = (*marker).max(up_to_seq);
            }
            ChatEvent::UnreadReminded { reminders, .. } => {
                for reminder in reminders {
                    let marker = self.reminded.entry(reminder.user_id).or_insert(0);
                    *marker = (*marker).max(reminder.up_to_seq);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = Vec<ChatEvent>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn user(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    const ALICE: u128 = 1;
    const BOB: u128 = 2;
    const CAROL: u128 = 3;
    const OUTSIDER: u128 = 9;

    fn patient(n: u128) -> Actor {
        Actor::new(user(n), Role::Patient)
    }

    fn admin() -> Actor {
        Actor::new(user(100), Role::Admin)
    }

    fn msg(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    fn body(text: &str) -> MessageBody {
        MessageBody::parse(text).unwrap()
    }

    fn created(kind: ChatKind, members: &[u128]) -> ChatEvent {
        ChatEvent::ChatCreated {
            chat_id: user(500),
            kind,
            title: None,
            members: members.iter().copied().map(user).collect(),
            created_by: user(members[0]),
            created_at: at(),
        }
    }

    /// A group of Alice and Bob.
    fn group() -> Given {
        vec![created(ChatKind::Group, &[ALICE, BOB])]
    }

    /// A direct chat between Alice and Bob.
    fn direct() -> Given {
        vec![created(ChatKind::Direct, &[ALICE, BOB])]
    }

    fn sent(seq: u64, author: u128) -> ChatEvent {
        ChatEvent::MessageSent {
            message_id: msg(seq as u128),
            seq,
            author: user(author),
            body: Some(body("hello")),
            attachments: vec![],
            sent_at: at(),
        }
    }

    fn deleted(seq: u64, by: u128) -> ChatEvent {
        ChatEvent::MessageDeleted {
            message_id: msg(seq as u128),
            seq,
            deleted_by: user(by),
            deleted_at: at(),
        }
    }

    fn with(mut given: Given, more: impl IntoIterator<Item = ChatEvent>) -> Given {
        given.extend(more);
        given
    }

    async fn expect(given: Given, command: ChatCommand, events: Vec<ChatEvent>) {
        TestFramework::<Chat>::with(())
            .given(given)
            .when_async(command)
            .await
            .then_expect_events(events);
    }

    async fn reject(given: Given, command: ChatCommand, error: DomainError) {
        TestFramework::<Chat>::with(())
            .given(given)
            .when_async(command)
            .await
            .then_expect_error(error);
    }

    async fn reject_invalid(given: Given, command: ChatCommand, field: &str) {
        let error = TestFramework::<Chat>::with(())
            .given(given)
            .when_async(command)
            .await
            .inspect_result()
            .unwrap_err();
        assert_eq!(error.validation().map(|v| v.field.as_str()), Some(field));
    }

    fn create(actor: Actor, kind: ChatKind, members: &[u128]) -> ChatCommand {
        ChatCommand::Create {
            actor,
            chat_id: user(500),
            kind,
            title: None,
            members: members.iter().copied().map(active).collect(),
            at: at(),
        }
    }

    /// `who`, with an active patient's account.
    fn active(who: u128) -> Named {
        Named {
            user_id: user(who),
            active_as: Some(Role::Patient),
        }
    }

    fn add(actor: Actor, who: u128) -> ChatCommand {
        ChatCommand::AddMember {
            actor,
            user: active(who),
            at: at(),
        }
    }

    fn remove(actor: Actor, who: u128) -> ChatCommand {
        ChatCommand::RemoveMember {
            actor,
            user_id: user(who),
            at: at(),
        }
    }

    fn send(actor: Actor, n: u128) -> ChatCommand {
        ChatCommand::SendMessage {
            actor,
            message_id: msg(n),
            body: Some(body("hello")),
            attachments: vec![],
            at: at(),
        }
    }

    fn edit(actor: Actor, n: u128) -> ChatCommand {
        ChatCommand::EditMessage {
            actor,
            message_id: msg(n),
            body: body("edited"),
            at: at(),
        }
    }

    fn delete(actor: Actor, n: u128) -> ChatCommand {
        ChatCommand::DeleteMessage {
            actor,
            message_id: msg(n),
            at: at(),
        }
    }

    fn mark_read(actor: Actor, up_to_seq: u64) -> ChatCommand {
        ChatCommand::MarkRead {
            actor,
            up_to_seq,
            at: at(),
        }
    }

    fn file(n: u128) -> Uuid {
        Uuid::from_u128(2000 + n)
    }

    fn digest(byte: u8) -> Sha256 {
        Sha256::of_digest([byte; 32])
    }

    fn announce(actor: Actor, n: u128, content_type: &str, size: u64) -> ChatCommand {
        ChatCommand::AnnounceAttachment {
            actor,
            attachment_id: file(n),
            filename: FileName::parse("scan.png").unwrap(),
            content_type: ContentType::parse(content_type).unwrap(),
            size,
            sha256: digest(1),
            limits: AttachmentLimits {
                max_size: 1000,
                ..AttachmentLimits::default()
            },
            at: at(),
        }
    }

    fn announced(by: u128, n: u128) -> ChatEvent {
        ChatEvent::AttachmentAnnounced {
            attachment_id: file(n),
            filename: FileName::parse("scan.png").unwrap(),
            content_type: ContentType::parse("image/png").unwrap(),
            size: 10,
            sha256: digest(1),
            announced_by: user(by),
            at: at(),
        }
    }

    /// Alice's message `seq`, without text, carrying attachment `n`.
    fn carrying(seq: u64, n: u128) -> ChatEvent {
        ChatEvent::MessageSent {
            message_id: msg(seq as u128),
            seq,
            author: user(ALICE),
            body: None,
            attachments: vec![file(n)],
            sent_at: at(),
        }
    }

    /// Alice's message `n` carrying attachment 1, stored as `stored`.
    fn send_file(n: u128, stored: Option<(u64, Sha256)>) -> ChatCommand {
        ChatCommand::SendMessage {
            actor: patient(ALICE),
            message_id: msg(n),
            body: None,
            attachments: vec![Observed {
                attachment_id: file(1),
                stored,
            }],
            at: at(),
        }
    }

    // --- Attachments ---

    #[tokio::test]
    async fn a_member_announces_an_allowed_file_within_the_size_limit() {
        let command = announce(patient(ALICE), 1, "image/png", 10);
        expect(group(), command, vec![announced(ALICE, 1)]).await;
    }

    #[tokio::test]
    async fn an_announced_file_must_be_of_an_allowed_type_and_size_and_from_a_member() {
        let exe = announce(patient(ALICE), 1, "application/x-msdownload", 10);
        reject_invalid(group(), exe, "content_type").await;
        reject_invalid(
            group(),
            announce(patient(ALICE), 1, "image/png", 1001),
            "size",
        )
        .await;
        let outsider = announce(patient(OUTSIDER), 1, "image/png", 10);
        let error = DomainError::Forbidden(Permission::OnlyMembersMayAttachFiles);
        reject(group(), outsider, error).await;
        let again = announce(patient(ALICE), 1, "image/png", 10);
        let given = with(group(), [announced(ALICE, 1)]);
        reject(given, again, DomainError::AttachmentAlreadyExists).await;
    }

    #[tokio::test]
    async fn a_message_of_an_uploaded_attachment_needs_no_text() {
        let given = with(group(), [announced(ALICE, 1)]);
        let event = carrying(1, 1);
        expect(given, send_file(1, Some((10, digest(1)))), vec![event]).await;
    }

    #[tokio::test]
    async fn herald_records_a_thumbnail_of_a_sent_image_once() {
        let record = |actor| ChatCommand::RecordThumbnail {
            actor,
            attachment_id: file(1),
            at: at(),
        };
        let carried = carrying(1, 1);
        let recorded = ChatEvent::ThumbnailRecorded {
            attachment_id: file(1),
            at: at(),
        };
        let given = with(group(), [announced(ALICE, 1), carried]);
        let system = Actor::system();
        expect(given.clone(), record(system), vec![recorded.clone()]).await;
        expect(with(given.clone(), [recorded]), record(system), vec![]).await;
        expect(with(group(), [announced(ALICE, 1)]), record(system), vec![]).await;
        let error = DomainError::Forbidden(Permission::OnlyHeraldRecordsThumbnails);
        reject(given, record(patient(ALICE)), error).await;
    }

    #[tokio::test]
    async fn herald_gives_up_an_upload_no_message_carries_and_no_message_carries_it_after() {
        let expire = |actor| ChatCommand::ExpireAttachment {
            actor,
            attachment_id: file(1),
            at: at(),
        };
        let expired = ChatEvent::AttachmentExpired {
            attachment_id: file(1),
            at: at(),
        };
        let given = with(group(), [announced(ALICE, 1)]);
        let system = Actor::system();
        expect(given.clone(), expire(system), vec![expired.clone()]).await;
        let gone = with(given.clone(), [expired]);
        expect(gone.clone(), expire(system), vec![]).await;
        reject_invalid(gone, send_file(1, Some((10, digest(1)))), "attachments").await;
        let carried = with(given.clone(), [carrying(1, 1)]);
        reject(carried, expire(system), DomainError::AttachmentInUse).await;
        let error = DomainError::Forbidden(Permission::OnlyHeraldExpiresAttachments);
        reject(given, expire(patient(ALICE)), error).await;
    }

    #[tokio::test]
    async fn a_message_needs_text_or_an_attachment() {
        let mut command = send(patient(ALICE), 1);
        if let ChatCommand::SendMessage { body, .. } = &mut command {
            *body = None;
        }
        reject_invalid(group(), command, "body").await;
    }

    #[tokio::test]
    async fn an_attachment_not_uploaded_or_whose_bytes_do_not_match_is_refused() {
        let given = with(group(), [announced(ALICE, 1)]);
        reject_invalid(given.clone(), send_file(1, None), "attachments").await;
        let longer = send_file(1, Some((11, digest(1))));
        reject_invalid(given.clone(), longer, "attachments").await;
        let other = send_file(1, Some((10, digest(2))));
        reject_invalid(given, other, "attachments").await;
    }

    #[tokio::test]
    async fn an_attachment_of_another_chat_or_person_or_already_used_is_refused() {
        let stored = Some((10, digest(1)));
        reject_invalid(group(), send_file(1, stored.clone()), "attachments").await;
        let bobs = with(group(), [announced(BOB, 1)]);
        reject_invalid(bobs, send_file(1, stored.clone()), "attachments").await;
        let mut used = with(group(), [announced(ALICE, 1)]);
        used.push(carrying(1, 1));
        reject_invalid(used, send_file(2, stored), "attachments").await;
    }

    // --- Create ---

    #[tokio::test]
    async fn the_creator_is_the_first_member_and_duplicates_are_dropped() {
        let command = ChatCommand::Create {
            actor: patient(ALICE),
            chat_id: user(500),
            kind: ChatKind::Group,
            title: Some(ChatTitle::parse("Care team").unwrap()),
            members: vec![active(BOB), active(ALICE), active(CAROL), active(BOB)],
            at: at(),
        };
        let event = ChatEvent::ChatCreated {
            chat_id: user(500),
            kind: ChatKind::Group,
            title: Some(ChatTitle::parse("Care team").unwrap()),
            members: vec![user(ALICE), user(BOB), user(CAROL)],
            created_by: user(ALICE),
            created_at: at(),
        };
        expect(vec![], command, vec![event]).await;
    }

    #[tokio::test]
    async fn a_direct_chat_joins_the_creator_and_one_other_person() {
        expect(
            vec![],
            create(patient(ALICE), ChatKind::Direct, &[BOB]),
            direct(),
        )
        .await;
    }

    #[tokio::test]
    async fn herald_itself_does_not_join_the_chats_it_opens() {
        let command = create(Actor::system(), ChatKind::Direct, &[ALICE, BOB]);
        let event = ChatEvent::ChatCreated {
            chat_id: user(500),
            kind: ChatKind::Direct,
            title: None,
            members: vec![user(ALICE), user(BOB)],
            created_by: Uuid::nil(),
            created_at: at(),
        };
        expect(vec![], command, vec![event]).await;
    }

    #[tokio::test]
    async fn a_chat_cannot_be_created_twice() {
        let command = create(patient(ALICE), ChatKind::Group, &[]);
        reject(group(), command, DomainError::ChatAlreadyExists).await;
    }

    #[tokio::test]
    async fn an_auditor_cannot_create_a_chat() {
        let auditor = Actor::new(user(ALICE), Role::Auditor);
        let command = create(auditor, ChatKind::Group, &[BOB]);
        let error = DomainError::Forbidden(Permission::AuditorsCannotCreateChats);
        reject(vec![], command, error).await;
    }

    #[tokio::test]
    async fn a_direct_chat_needs_exactly_two_distinct_members() {
        for others in [&[][..], &[ALICE], &[ALICE, ALICE], &[BOB, CAROL]] {
            let command = create(patient(ALICE), ChatKind::Direct, others);
            reject_invalid(vec![], command, "members").await;
        }
    }

    #[tokio::test]
    async fn a_group_chat_holds_between_one_and_256_members() {
        let alone = create(patient(ALICE), ChatKind::Group, &[]);
        expect(vec![], alone, vec![created(ChatKind::Group, &[ALICE])]).await;

        let full: Vec<u128> = (2..=256).collect();
        let command = create(patient(ALICE), ChatKind::Group, &full);
        let result = Chat::default().decide(command).unwrap();
        assert!(
            matches!(&result[0], ChatEvent::ChatCreated { members, .. } if members.len() == 256)
        );

        let over: Vec<u128> = (2..=257).collect();
        let command = create(patient(ALICE), ChatKind::Group, &over);
        reject_invalid(vec![], command, "members").await;

        let nobody = create(Actor::system(), ChatKind::Group, &[]);
        reject_invalid(vec![], nobody, "members").await;
    }

    #[tokio::test]
    async fn a_chat_opens_only_with_active_users() {
        for kind in [ChatKind::Direct, ChatKind::Group] {
            let mut command = create(patient(ALICE), kind, &[BOB]);
            if let ChatCommand::Create { members, .. } = &mut command {
                members[0].active_as = None;
            }
            reject_invalid(vec![], command, "members").await;
        }
    }

    #[tokio::test]
    async fn commands_on_a_missing_chat_are_not_found() {
        for command in [
            add(admin(), BOB),
            remove(admin(), BOB),
            send(patient(ALICE), 1),
            edit(patient(ALICE), 1),
            delete(admin(), 1),
            mark_read(patient(ALICE), 0),
        ] {
            reject(vec![], command, DomainError::ChatNotFound).await;
        }
    }

    // --- AddMember ---

    #[tokio::test]
    async fn a_member_can_add_someone_to_a_group() {
        let event = ChatEvent::MemberAdded {
            user_id: user(CAROL),
            added_by: user(ALICE),
            at: at(),
        };
        expect(group(), add(patient(ALICE), CAROL), vec![event]).await;
    }

    #[tokio::test]
    async fn an_admin_who_is_not_a_member_can_add_someone() {
        let event = ChatEvent::MemberAdded {
            user_id: user(CAROL),
            added_by: admin().user_id,
            at: at(),
        };
        expect(group(), add(admin(), CAROL), vec![event]).await;
    }

    #[tokio::test]
    async fn an_outsider_cannot_add_members() {
        let error = DomainError::Forbidden(Permission::OnlyMembersMayAddMembers);
        reject(group(), add(patient(OUTSIDER), CAROL), error).await;
    }

    #[tokio::test]
    async fn nobody_can_add_members_to_a_direct_chat() {
        let error = DomainError::DirectChatMembersAreFixed;
        reject(direct(), add(admin(), CAROL), error).await;
    }

    #[tokio::test]
    async fn only_an_active_user_can_be_added() {
        let stranger = ChatCommand::AddMember {
            actor: patient(ALICE),
            user: Named {
                user_id: user(CAROL),
                active_as: None,
            },
            at: at(),
        };
        reject_invalid(group(), stranger, "user_id").await;
    }

    #[tokio::test]
    async fn an_existing_member_cannot_be_added_again() {
        reject(
            group(),
            add(patient(ALICE), BOB),
            DomainError::AlreadyAMember,
        )
        .await;
    }

    #[tokio::test]
    async fn a_full_group_accepts_no_more_members() {
        let full: Vec<u128> = (1..=256).collect();
        let given = vec![created(ChatKind::Group, &full)];
        reject_invalid(given, add(patient(ALICE), 999), "user_id").await;
    }

    // --- RemoveMember ---

    #[tokio::test]
    async fn a_member_can_leave_a_group() {
        let event = ChatEvent::MemberRemoved {
            user_id: user(BOB),
            removed_by: user(BOB),
            at: at(),
        };
        expect(group(), remove(patient(BOB), BOB), vec![event]).await;
    }

    #[tokio::test]
    async fn an_admin_can_remove_someone_else() {
        let event = ChatEvent::MemberRemoved {
            user_id: user(BOB),
            removed_by: admin().user_id,
            at: at(),
        };
        expect(group(), remove(admin(), BOB), vec![event]).await;
    }

    #[tokio::test]
    async fn a_member_cannot_remove_someone_else() {
        let error = DomainError::Forbidden(Permission::OnlyTheMemberOrAnAdminMayRemove);
        reject(group(), remove(patient(ALICE), BOB), error).await;
    }

    #[tokio::test]
    async fn nobody_can_leave_a_direct_chat() {
        let error = DomainError::DirectChatMembersAreFixed;
        reject(direct(), remove(patient(BOB), BOB), error).await;
    }

    #[tokio::test]
    async fn removing_a_non_member_is_a_conflict() {
        reject(group(), remove(admin(), CAROL), DomainError::NotAMember).await;
    }

    #[tokio::test]
    async fn a_removed_member_can_be_added_back() {
        let given = with(
            group(),
            [ChatEvent::MemberRemoved {
                user_id: user(BOB),
                removed_by: user(BOB),
                at: at(),
            }],
        );
        let event = ChatEvent::MemberAdded {
            user_id: user(BOB),
            added_by: user(ALICE),
            at: at(),
        };
        expect(given, add(patient(ALICE), BOB), vec![event]).await;
    }

    // --- SendMessage ---

    #[tokio::test]
    async fn the_first_message_gets_sequence_one() {
        expect(group(), send(patient(ALICE), 1), vec![sent(1, ALICE)]).await;
    }

    #[tokio::test]
    async fn sequence_numbers_continue_without_gaps_after_deletions() {
        let given = with(group(), [sent(1, ALICE), sent(2, BOB), deleted(2, BOB)]);
        expect(given, send(patient(BOB), 3), vec![sent(3, BOB)]).await;
    }

    #[tokio::test]
    async fn a_non_member_cannot_send_even_as_admin() {
        let error = DomainError::Forbidden(Permission::OnlyMembersMaySendMessages);
        reject(group(), send(admin(), 1), error.clone()).await;
        reject(group(), send(patient(OUTSIDER), 1), error).await;
    }

    #[tokio::test]
    async fn a_message_id_cannot_be_reused() {
        let given = with(group(), [sent(1, ALICE)]);
        reject(
            given,
            send(patient(BOB), 1),
            DomainError::MessageAlreadyExists,
        )
        .await;
    }

    // --- EditMessage ---

    #[tokio::test]
    async fn the_author_can_edit_their_message() {
        let given = with(group(), [sent(1, ALICE), sent(2, ALICE)]);
        let event = ChatEvent::MessageEdited {
            message_id: msg(2),
            seq: 2,
            body: body("edited"),
            edited_by: user(ALICE),
            edited_at: at(),
        };
        expect(given, edit(patient(ALICE), 2), vec![event]).await;
    }

    #[tokio::test]
    async fn editing_an_unknown_message_is_not_found() {
        reject(
            group(),
            edit(patient(ALICE), 1),
            DomainError::MessageNotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn nobody_else_can_edit_a_message_not_even_an_admin() {
        let given = with(group(), [sent(1, ALICE)]);
        let error = DomainError::Forbidden(Permission::OnlyTheAuthorMayEdit);
        reject(given.clone(), edit(patient(BOB), 1), error.clone()).await;
        reject(given, edit(admin(), 1), error).await;
    }

    #[tokio::test]
    async fn an_author_who_left_cannot_edit() {
        let left = ChatEvent::MemberRemoved {
            user_id: user(ALICE),
            removed_by: user(ALICE),
            at: at(),
        };
        let given = with(group(), [sent(1, ALICE), left]);
        let error = DomainError::Forbidden(Permission::OnlyMembersMayEdit);
        reject(given, edit(patient(ALICE), 1), error).await;
    }

    #[tokio::test]
    async fn a_deleted_message_cannot_be_edited() {
        let given = with(group(), [sent(1, ALICE), deleted(1, ALICE)]);
        let error = DomainError::MessageAlreadyDeleted;
        reject(given, edit(patient(ALICE), 1), error).await;
    }

    // --- DeleteMessage ---

    #[tokio::test]
    async fn the_author_can_delete_their_message() {
        let given = with(group(), [sent(1, ALICE)]);
        expect(given, delete(patient(ALICE), 1), vec![deleted(1, ALICE)]).await;
    }

    #[tokio::test]
    async fn an_admin_can_delete_anyones_message() {
        let given = with(group(), [sent(1, ALICE)]);
        let event = ChatEvent::MessageDeleted {
            message_id: msg(1),
            seq: 1,
            deleted_by: admin().user_id,
            deleted_at: at(),
        };
        expect(given, delete(admin(), 1), vec![event]).await;
    }

    #[tokio::test]
    async fn another_member_cannot_delete_a_message() {
        let given = with(group(), [sent(1, ALICE)]);
        let error = DomainError::Forbidden(Permission::OnlyTheAuthorOrAnAdminMayDelete);
        reject(given, delete(patient(BOB), 1), error).await;
    }

    #[tokio::test]
    async fn deleting_an_unknown_message_is_not_found() {
        reject(group(), delete(admin(), 1), DomainError::MessageNotFound).await;
    }

    #[tokio::test]
    async fn a_message_cannot_be_deleted_twice() {
        let given = with(group(), [sent(1, ALICE), deleted(1, ALICE)]);
        let error = DomainError::MessageAlreadyDeleted;
        reject(given, delete(patient(ALICE), 1), error).await;
    }

    // --- MarkRead ---

    #[tokio::test]
    async fn a_member_can_move_their_read_marker_forward() {
        let given = with(group(), [sent(1, ALICE), sent(2, ALICE)]);
        let event = ChatEvent::ReadUpTo {
            user_id: user(BOB),
            up_to_seq: 2,
            at: at(),
        };
        expect(given, mark_read(patient(BOB), 2), vec![event]).await;
    }

    #[tokio::test]
    async fn marking_read_at_or_behind_the_marker_records_nothing() {
        let read = ChatEvent::ReadUpTo {
            user_id: user(BOB),
            up_to_seq: 2,
            at: at(),
        };
        let given = with(group(), [sent(1, ALICE), sent(2, ALICE), read]);
        expect(given.clone(), mark_read(patient(BOB), 2), vec![]).await;
        expect(given.clone(), mark_read(patient(BOB), 1), vec![]).await;
        expect(given, mark_read(patient(ALICE), 0), vec![]).await;
    }

    #[tokio::test]
    async fn marking_read_beyond_the_latest_message_is_invalid() {
        let given = with(group(), [sent(1, ALICE)]);
        reject_invalid(given, mark_read(patient(BOB), 2), "up_to_seq").await;
    }

    #[tokio::test]
    async fn a_non_member_cannot_mark_read() {
        let given = with(group(), [sent(1, ALICE)]);
        let error = DomainError::Forbidden(Permission::OnlyMembersMayMarkRead);
        reject(given, mark_read(admin(), 1), error).await;
    }

    // --- State ---

    #[test]
    fn state_tracks_members_sequence_and_read_markers() {
        let mut chat = Chat::default();
        assert!(!chat.exists());
        for event in with(
            group(),
            [
                sent(1, ALICE),
                ChatEvent::ReadUpTo {
                    user_id: user(BOB),
                    up_to_seq: 1,
                    at: at(),
                },
            ],
        ) {
            chat.apply(event);
        }
        assert!(chat.exists());
        assert_eq!(chat.kind(), Some(ChatKind::Group));
        assert_eq!(chat.members(), &[user(ALICE), user(BOB)]);
        assert!(chat.is_member(user(BOB)) && !chat.is_member(user(CAROL)));
        assert_eq!(chat.last_seq(), 1);
        assert_eq!(chat.read_up_to(user(BOB)), 1);
        assert_eq!(chat.read_up_to(user(ALICE)), 0);
    }

    #[test]
    fn snapshots_keep_per_message_state_compact_and_round_trip() {
        let mut chat = Chat::default();
        for event in with(group(), [sent(1, ALICE), sent(2, BOB), deleted(2, BOB)]) {
            chat.apply(event);
        }
        let json = serde_json::to_value(&chat).unwrap();
        let first = &json["messages"][msg(1).to_string()];
        assert_eq!(first, &serde_json::json!({"a": user(ALICE), "s": 1}));
        let second = &json["messages"][msg(2).to_string()];
        assert_eq!(second["d"], serde_json::json!(true));
        assert_eq!(serde_json::from_value::<Chat>(json).unwrap(), chat);
    }

    #[test]
    fn stored_events_are_revalidated_on_load() {
        let event = sent(1, ALICE);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["MessageSent"]["body"], "hello");
        assert_eq!(
            serde_json::from_value::<ChatEvent>(json.clone()).unwrap(),
            event
        );

        let mut tampered = json;
        tampered["MessageSent"]["body"] = serde_json::json!("   ");
        assert!(serde_json::from_value::<ChatEvent>(tampered).is_err());
    }

    #[test]
    fn events_are_named_after_their_variant_at_version_one() {
        assert_eq!(sent(1, ALICE).event_type(), "MessageSent");
        assert_eq!(deleted(1, ALICE).event_type(), "MessageDeleted");
        assert_eq!(sent(1, ALICE).event_version(), "1");
    }

    fn remind(actor: Actor, through_seq: u64) -> ChatCommand {
        ChatCommand::RemindUnread {
            actor,
            through_seq,
            at: at(),
        }
    }

    #[test]
    fn unread_messages_from_others_are_reminded_of_once_and_never_to_their_author() {
        const CAROL: u128 = 3;
        let mut chat = Chat::default();
        let carol_joins = ChatEvent::MemberAdded {
            user_id: user(CAROL),
            added_by: user(ALICE),
            at: at(),
        };
        let carol_reads = ChatEvent::ReadUpTo {
            user_id: user(CAROL),
            up_to_seq: 2,
            at: at(),
        };
        let given = [
            carol_joins,
            sent(1, ALICE),
            sent(2, BOB),
            deleted(2, BOB),
            sent(3, BOB),
        ];
        for event in with(group(), given.into_iter().chain([carol_reads])) {
            chat.apply(event);
        }
        let bob = Actor::new(user(BOB), Role::Patient);
        assert_eq!(
            chat.decide(remind(bob, 3)),
            Err(Permission::OnlyHeraldReminds.into())
        );
        // Alice misses Bob's third (his second was deleted), Bob Alice's
        // first, Carol read up to two and misses the third.
        let reminded = |user_id, messages| UnreadReminder {
            user_id: user(user_id),
            up_to_seq: 3,
            messages,
        };
        let events = chat.decide(remind(Actor::system(), 3)).unwrap();
        let ChatEvent::UnreadReminded { reminders, .. } = &events[0] else {
            panic!("{events:?}");
        };
        assert_eq!(
            reminders,
            &[reminded(ALICE, 1), reminded(BOB, 1), reminded(CAROL, 1)]
        );
        for event in events {
            chat.apply(event);
        }
        assert_eq!(chat.decide(remind(Actor::system(), 3)).unwrap(), []);
        // Beyond the newest message there is nothing more.
        assert_eq!(chat.decide(remind(Actor::system(), 9)).unwrap(), []);
    }
}
