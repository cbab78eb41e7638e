//! Chat commands: create, membership, messages, read markers.

use axum::extract::State;
use chrono::Utc;
use commands::NewId;
use domain::chat::{Chat, ChatCommand, ChatEvent};
use domain::values::{ChatKind, ChatTitle, MessageBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::command::{Accepted, Answer, CommandRequest, Fields, Path};
use crate::error::ApiError;
use crate::openapi::{self, IdempotencyKeyHeader};
use crate::AppState;

/// The chat command routes, under `/api/v1`, each with its description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(add_member))
        .routes(routes!(remove_member))
        .routes(routes!(send_message))
        .routes(routes!(edit_message, delete_message))
        .routes(routes!(mark_read))
}

/// A new chat. Fields are read as optional so that a missing one is a 422
/// naming it, like an invalid one; the contract requires `kind` and `members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateChat {
    /// The chat's id; generated when absent.
    id: Option<Uuid>,
    /// `direct` (two people) or `group`.
    #[schema(value_type = ChatKind, required = true)]
    kind: Option<String>,
    /// A display name.
    #[schema(value_type = Option<String>, min_length = 1)]
    title: Option<String>,
    /// Who else is in it, each an active user's account; the caller always is.
    #[schema(value_type = Vec<Uuid>, required = true)]
    members: Option<Vec<Uuid>>,
}

/// Opens a chat with the caller as a member.
#[utoipa::path(
    post,
    path = "/chats",
    tag = "chats",
    operation_id = "create_chat",
    params(IdempotencyKeyHeader),
    request_body = CreateChat,
    responses(
        (status = 201, description = "The chat was opened (ChatCreated)", body = Accepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn create(
    State(app): State<AppState>,
    request: CommandRequest<CreateChat>,
) -> Result<Answer<Accepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let new = NewId::of(body.id);
    let chat_id = new.id();
    let mut fields = Fields::default();
    let kind = fields.parse("kind", body.kind, |kind| kind.parse::<ChatKind>());
    let title = fields.optional(body.title, ChatTitle::parse);
    let members = fields.required("members", body.members);
    let ((kind, title), members) = fields.finish(kind.zip(title).zip(members))?;
    let command = ChatCommand::Create {
        actor,
        chat_id,
        kind,
        title,
        members: app.write.people(&members).await?,
        at: Utc::now(),
    };
    let committed = app.write.create::<Chat>(new, command, &metadata).await?;
    Ok(Answer::created(&committed, Accepted::of(&committed)))
}

/// Who joins a group chat.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddMember {
    /// The user who joins: an active user's account.
    #[schema(value_type = Uuid, required = true)]
    user_id: Option<Uuid>,
}

/// Adds a member to a group chat; members of the group and admins may.
#[utoipa::path(
    post,
    path = "/chats/{id}/members",
    tag = "chats",
    operation_id = "add_chat_member",
    params(("id" = Uuid, Path, description = "The chat"), IdempotencyKeyHeader),
    request_body = AddMember,
    responses(
        (status = 200, description = "The member was added (MemberAdded)", body = Accepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn add_member(
    State(app): State<AppState>,
    Path(chat_id): Path<Uuid>,
    request: CommandRequest<AddMember>,
) -> Result<Answer<Accepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let user_id = fields.required("user_id", body.user_id);
    let user_id = fields.finish(user_id)?;
    let command = ChatCommand::AddMember {
        actor,
        user: app.write.person(user_id).await?,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    Ok(Answer::ok(&committed, Accepted::of(&committed)))
}

/// A command that takes no body; `{}` or nothing at all is accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

/// Removes a member; the member themself or an admin may.
#[utoipa::path(
    delete,
    path = "/chats/{id}/members/{user_id}",
    tag = "chats",
    operation_id = "remove_chat_member",
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("user_id" = Uuid, Path, description = "The member who leaves"),
        IdempotencyKeyHeader,
    ),
    responses(
        (status = 200, description = "The member was removed (MemberRemoved)", body = Accepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn remove_member(
    State(app): State<AppState>,
    Path((chat_id, user_id)): Path<(Uuid, Uuid)>,
    request: CommandRequest<NoBody>,
) -> Result<Answer<Accepted>, ApiError> {
    let CommandRequest {
        actor, metadata, ..
    } = request;
    let command = ChatCommand::RemoveMember {
        actor,
        user_id,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    Ok(Answer::ok(&committed, Accepted::of(&committed)))
}

/// The answer to a sent message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageSent {
    /// The message's id, the chat's version and the consistency token that
    /// shows the message.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The chat.
    pub chat_id: Uuid,
    /// The message's place in the chat, from 1 without gaps.
    #[schema(minimum = 1)]
    pub seq: u64,
}

/// The answer to an edited or deleted message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageChanged {
    /// The message's id, the chat's version and the consistency token that
    /// shows the change.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The chat.
    pub chat_id: Uuid,
}

/// A new message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SendMessage {
    /// The message's id; generated when absent.
    id: Option<Uuid>,
    /// The text: not blank, at most 4000 characters; required unless the
    /// message carries attachments.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 4000)]
    body: Option<String>,
    /// Attachments the caller announced in this chat and uploaded, at most
    /// 10, each carried by one message only.
    #[serde(default)]
    #[schema(max_items = 10)]
    attachments: Vec<Uuid>,
}

/// Sends a message to a chat the caller is a member of.
#[utoipa::path(
    post,
    path = "/chats/{id}/messages",
    tag = "chats",
    operation_id = "send_message",
    params(("id" = Uuid, Path, description = "The chat"), IdempotencyKeyHeader),
    request_body = SendMessage,
    responses(
        (status = 201, description = "The message was stored (MessageSent)", body = MessageSent),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn send_message(
    State(app): State<AppState>,
    Path(chat_id): Path<Uuid>,
    request: CommandRequest<SendMessage>,
) -> Result<Answer<MessageSent>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let message_id = body.id.unwrap_or_else(Uuid::now_v7);
    let mut fields = Fields::default();
    let text = if body.attachments.is_empty() {
        fields
            .parse("body", body.body, MessageBody::parse)
            .map(Some)
    } else {
        fields.optional(body.body, MessageBody::parse)
    };
    let text = fields.finish(text)?;
    // What the store holds is looked at now, so that the chat decides from
    // the bytes actually uploaded.
    let attachments = app
        .attachments
        .storage
        .observe(chat_id, &body.attachments)
        .await?;
    let command = ChatCommand::SendMessage {
        actor,
        message_id,
        body: text,
        attachments,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    let sent = committed.events.iter().find_map(|event| match event {
        ChatEvent::MessageSent {
            message_id, seq, ..
        } => Some((*message_id, *seq)),
        _ => None,
    });
    let (message_id, seq) = sent.unwrap_or((message_id, committed.version));
    Ok(Answer::created(
        &committed,
        MessageSent {
            accepted: Accepted::of(&committed).naming(message_id),
            chat_id,
            seq,
        },
    ))
}

/// A message's new text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EditMessage {
    /// The text: not blank, at most 4000 characters.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 4000)]
    body: Option<String>,
}

/// Edits a message; only its author may.
#[utoipa::path(
    patch,
    path = "/chats/{id}/messages/{message_id}",
    tag = "chats",
    operation_id = "edit_message",
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The message"),
        IdempotencyKeyHeader,
    ),
    request_body = EditMessage,
    responses(
        (status = 200, description = "The message was edited (MessageEdited)", body = MessageChanged),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn edit_message(
    State(app): State<AppState>,
    Path((chat_id, message_id)): Path<(Uuid, Uuid)>,
    request: CommandRequest<EditMessage>,
) -> Result<Answer<MessageChanged>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let text = fields.parse("body", body.body, MessageBody::parse);
    let command = fields.finish(text.map(|body| ChatCommand::EditMessage {
        actor,
        message_id,
        body,
        at: Utc::now(),
    }))?;
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    Ok(Answer::ok(
        &committed,
        MessageChanged {
            accepted: Accepted::of(&committed).naming(message_id),
            chat_id,
        },
    ))
}

/// Deletes a message; its author or an admin may.
#[utoipa::path(
    delete,
    path = "/chats/{id}/messages/{message_id}",
    tag = "chats",
    operation_id = "delete_message",
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The message"),
        IdempotencyKeyHeader,
    ),
    responses(
        (status = 200, description = "The message was deleted (MessageDeleted)", body = MessageChanged),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn delete_message(
    State(app): State<AppState>,
    Path((chat_id, message_id)): Path<(Uuid, Uuid)>,
    request: CommandRequest<NoBody>,
) -> Result<Answer<MessageChanged>, ApiError> {
    let CommandRequest {
        actor, metadata, ..
    } = request;
    let command = ChatCommand::DeleteMessage {
        actor,
        message_id,
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    Ok(Answer::ok(
        &committed,
        MessageChanged {
            accepted: Accepted::of(&committed).naming(message_id),
            chat_id,
        },
    ))
}

/// How far the caller has read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MarkRead {
    /// The `seq` of the last message read.
    #[schema(value_type = u64, required = true)]
    up_to_seq: Option<u64>,
}

/// Moves the caller's read marker in a chat they are a member of.
#[utoipa::path(
    post,
    path = "/chats/{id}/read",
    tag = "chats",
    operation_id = "mark_chat_read",
    params(("id" = Uuid, Path, description = "The chat"), IdempotencyKeyHeader),
    request_body = MarkRead,
    responses(
        (status = 200, description = "The marker moved (ReadUpTo)", body = Accepted),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn mark_read(
    State(app): State<AppState>,
    Path(chat_id): Path<Uuid>,
    request: CommandRequest<MarkRead>,
) -> Result<Answer<Accepted>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let up_to_seq = fields.required("up_to_seq", body.up_to_seq);
    let command = fields.finish(up_to_seq.map(|up_to_seq| ChatCommand::MarkRead {
        actor,
        up_to_seq,
        at: Utc::now(),
    }))?;
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    Ok(Answer::ok(&committed, Accepted::of(&committed)))
}
