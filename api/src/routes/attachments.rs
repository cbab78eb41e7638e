//! Chat attachments: announcing a file to get a signed upload URL, getting a
//! signed download URL of one a message carries, and, when attachments are
//! kept in a local directory, the signed upload and download URLs Herald
//! serves itself.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use commands::attachments::{unavailable, Storage};
use domain::access;
use domain::attachment::{ContentType, FileName, Sha256};
use domain::chat::{Chat, ChatCommand};
use futures::{FutureExt, StreamExt};
use object_store::{ObjectStore, WriteMultipart};
use projections::chats;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::attachments::{content_disposition, Grant, LocalSigned, DOWNLOAD_CACHE_CONTROL};
use crate::auth::Caller;
use crate::command::{Accepted, Answer, CommandRequest, Fields, Path};
use crate::error::ApiError;
use crate::openapi::{self, IdempotencyKeyHeader};
use crate::AppState;

/// Bytes of an upload gathered before they are written as one part.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// The attachment routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(announce))
        .routes(routes!(download_url))
}

/// The routes of a local directory's signed URLs, beside `/api/v1`.
pub fn local_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(download))
}

/// A file about to be uploaded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AnnounceAttachment {
    /// The file's name; stored sanitised (the last path component, without
    /// quotes, control characters and the like).
    #[schema(value_type = String, required = true)]
    filename: Option<String>,
    /// Its media type, one of those the deployment accepts.
    #[schema(value_type = String, required = true, example = "image/png")]
    content_type: Option<String>,
    /// Its size in bytes, at most the deployment's limit (25 MB by default).
    #[schema(value_type = u64, required = true, minimum = 1)]
    size: Option<u64>,
    /// The SHA-256 of its bytes, hexadecimal.
    #[schema(value_type = String, required = true, min_length = 64, max_length = 64)]
    sha256: Option<String>,
}

/// Where to upload an announced file.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttachmentUpload {
    /// The chat's version and the consistency token that shows the
    /// announcement.
    #[serde(flatten)]
    pub accepted: Accepted,
    /// The attachment's id, for the message that is to carry it.
    pub attachment_id: Uuid,
    /// `PUT` exactly the announced bytes here, once, before `expires_at`.
    pub upload_url: String,
    /// Headers the `PUT` must carry, as they are: they are part of what
    /// `upload_url` signs. Empty when Herald serves the URL itself.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub upload_headers: std::collections::BTreeMap<&'static str, String>,
    /// When `upload_url` stops working.
    pub expires_at: DateTime<Utc>,
}

/// Announces a file the caller is about to upload to a chat they are a
/// member of, and answers a signed URL to `PUT` its bytes to.
#[utoipa::path(
    post,
    path = "/chats/{id}/attachments",
    tag = "chats",
    operation_id = "announce_attachment",
    params(("id" = Uuid, Path, description = "The chat"), IdempotencyKeyHeader),
    request_body = AnnounceAttachment,
    responses(
        (status = 201, description = "The file was announced (AttachmentAnnounced)", body = AttachmentUpload),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn announce(
    State(app): State<AppState>,
    Path(chat_id): Path<Uuid>,
    request: CommandRequest<AnnounceAttachment>,
) -> Result<Answer<AttachmentUpload>, ApiError> {
    let CommandRequest {
        actor,
        metadata,
        body,
    } = request;
    let mut fields = Fields::default();
    let filename = fields.parse("filename", body.filename, FileName::parse);
    let content_type = fields.parse("content_type", body.content_type, ContentType::parse);
    let size = fields.required("size", body.size);
    let sha256 = fields.parse("sha256", body.sha256, Sha256::parse);
    let (((filename, content_type), size), sha256) =
        fields.finish(filename.zip(content_type).zip(size).zip(sha256))?;
    // One id per request: a retry with the same Idempotency-Key answers the
    // first announcement.
    let attachment_id = Uuid::now_v7();
    let command = ChatCommand::AnnounceAttachment {
        actor,
        attachment_id,
        filename,
        content_type,
        size,
        sha256: sha256.clone(),
        limits: app.attachments.limits.clone(),
        at: Utc::now(),
    };
    let committed = app
        .write
        .execute::<Chat>(chat_id, command, &metadata)
        .await?;
    let announced = committed.events.iter().find_map(|event| match event {
        domain::chat::ChatEvent::AttachmentAnnounced {
            attachment_id,
            size,
            sha256,
            ..
        } => Some((*attachment_id, *size, sha256.clone())),
        _ => None,
    });
    let (attachment_id, size, sha256) = announced.unwrap_or((attachment_id, size, sha256));
    let signed = app
        .attachments
        .upload_url(chat_id, attachment_id, size, &sha256)
        .await
        .map_err(|err| ApiError::Command(commands::CommandError::Internal(err)))?;
    Ok(Answer::created(
        &committed,
        AttachmentUpload {
            accepted: Accepted::of(&committed).naming(attachment_id),
            attachment_id,
            upload_url: signed.url.to_string(),
            upload_headers: signed.headers.into_iter().collect(),
            expires_at: signed.expires_at,
        },
    ))
}

/// Where to download an attachment, and what it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttachmentDownload {
    /// The attachment's id.
    pub attachment_id: Uuid,
    /// Its name, sanitised.
    pub filename: String,
    /// Its media type.
    pub content_type: String,
    /// Its size in bytes.
    pub size: i64,
    /// `GET` the bytes here before `expires_at`.
    pub download_url: String,
    /// `GET` a PNG thumbnail (at most 256 pixels a side) here before
    /// `expires_at`, once one was made of the image.
    pub thumbnail_url: Option<String>,
    /// When `download_url` stops working.
    pub expires_at: DateTime<Utc>,
}

/// A short-lived signed URL of an attachment's bytes, for the chat's members
/// and admins; an upload no message carries yet only for whoever announced it.
#[utoipa::path(
    get,
    path = "/chats/{id}/attachments/{attachment_id}",
    tag = "chats",
    operation_id = "get_attachment",
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("attachment_id" = Uuid, Path, description = "The attachment"),
    ),
    responses(
        (status = 200, description = "A signed download URL", body = AttachmentDownload),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn download_url(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path((chat_id, attachment_id)): Path<(Uuid, Uuid)>,
) -> Result<axum::Json<AttachmentDownload>, ApiError> {
    const NOT_FOUND: ApiError = ApiError::NotFound("no attachment with that id");
    let chat = app
        .readers
        .run(|conn| chats::access(conn, chat_id, actor.user_id).boxed())
        .await?
        .ok_or(NOT_FOUND)?;
    let attachment = app
        .readers
        .run(|conn| chats::attachment(conn, chat_id, attachment_id).boxed())
        .await?
        .ok_or(NOT_FOUND)?;
    if !access::may_download_attachment(
        actor,
        chat.member,
        attachment.sent,
        attachment.announced_by,
    ) {
        return Err(NOT_FOUND);
    }
    let failed = |err| ApiError::Command(commands::CommandError::Internal(err));
    let signed = app
        .attachments
        .download_url(
            chat_id,
            attachment_id,
            &attachment.filename,
            &attachment.content_type,
            false,
        )
        .await
        .map_err(failed)?;
    let thumbnail_url = if attachment.thumbnail {
        let name = format!("{}.thumbnail.png", attachment.filename);
        let thumbnail = app
            .attachments
            .download_url(chat_id, attachment_id, &name, "image/png", true)
            .await
            .map_err(failed)?;
        Some(thumbnail.url.to_string())
    } else {
        None
    };
    Ok(axum::Json(AttachmentDownload {
        attachment_id,
        filename: attachment.filename,
        content_type: attachment.content_type,
        size: attachment.size,
        download_url: signed.url.to_string(),
        thumbnail_url,
        expires_at: signed.expires_at,
    }))
}

/// The signed parameters of an upload URL.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// The chat.
    chat: Uuid,
    /// The attachment.
    attachment: Uuid,
    /// Unix seconds after which the URL no longer works.
    expires: i64,
    /// The announced size: the most bytes accepted.
    size: u64,
    /// The HMAC-SHA256 of the rest, hexadecimal.
    sig: String,
}

/// What an upload answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    /// The bytes stored.
    pub size: u64,
}

/// Stores the bytes of an announced attachment, kept in a local directory.
/// The URL comes from `POST /api/v1/chats/{id}/attachments` and is its only
/// authorisation; it works once, until it expires, for at most the announced
/// size. The body is streamed to the file, never held whole.
#[utoipa::path(
    put,
    path = "/attachments/upload",
    tag = "chats",
    operation_id = "upload_attachment",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "The bytes were stored", body = Uploaded),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 413, description = "More bytes than were announced", body = crate::error::Problem),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn upload(
    State(app): State<AppState>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, axum::Json<Uploaded>), ApiError> {
    let limit = query.size;
    let signed = LocalSigned {
        chat: query.chat,
        attachment: query.attachment,
        expires: query.expires,
        sig: query.sig,
    };
    app.attachments
        .check(&signed, &Grant::Upload { size: limit })
        .ok_or(ApiError::Forbidden(
            "the upload URL is not valid or has expired",
        ))?;
    let store = app.attachments.storage.store();
    let key = Storage::key(signed.chat, signed.attachment);
    if store.head(&key).await.is_ok() {
        return Err(ApiError::Conflict("the attachment was already uploaded"));
    }
    // Written beside the final object, then linked into place only if
    // nothing is there yet: an upload URL stores one object once.
    let staging =
        object_store::path::Path::from(format!("uploads/{}.{}", signed.attachment, Uuid::new_v4()));
    let size = write_capped(store.as_ref(), &staging, body, limit).await;
    let size = match size {
        Ok(size) => size,
        Err(err) => {
            let _ = store.delete(&staging).await;
            return Err(err);
        }
    };
    let placed = store.copy_if_not_exists(&staging, &key).await;
    let _ = store.delete(&staging).await;
    match placed {
        Ok(()) => Ok((StatusCode::CREATED, axum::Json(Uploaded { size }))),
        Err(object_store::Error::AlreadyExists { .. }) => {
            Err(ApiError::Conflict("the attachment was already uploaded"))
        }
        Err(err) => Err(unavailable(err).into()),
    }
}

/// Streams `body` into the object at `path`, refusing more than `limit`
/// bytes; answers how many were written.
async fn write_capped(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    body: Body,
    limit: u64,
) -> Result<u64, ApiError> {
    let upload = store.put_multipart(path).await.map_err(unavailable)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_CHUNK);
    let mut written = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(_) => {
                let _ = writer.abort().await;
                return Err(ApiError::BodyTimedOut);
            }
        };
        written += chunk.len() as u64;
        if written > limit {
            let _ = writer.abort().await;
            return Err(ApiError::PayloadTooLarge {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        // At most two parts in flight: memory stays a few chunks whatever
        // the file's size.
        writer.wait_for_capacity(2).await.map_err(unavailable)?;
        writer.put(chunk);
    }
    writer.finish().await.map_err(unavailable)?;
    Ok(written)
}

/// The signed parameters of a download URL.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    /// The chat.
    chat: Uuid,
    /// The attachment.
    attachment: Uuid,
    /// Unix seconds after which the URL no longer works.
    expires: i64,
    /// The name it is downloaded as.
    filename: String,
    /// The media type it is served as.
    content_type: String,
    /// Whether it is the thumbnail.
    #[serde(default)]
    thumbnail: bool,
    /// The HMAC-SHA256 of the rest, hexadecimal.
    sig: String,
}

/// Answers the bytes of an attachment kept in a local directory, as a
/// download (`Content-Disposition: attachment`). The URL comes from
/// `GET /api/v1/chats/{id}/attachments/{attachment_id}` and is its only
/// authorisation, until it expires.
#[utoipa::path(
    get,
    path = "/attachments/download",
    tag = "chats",
    operation_id = "download_attachment",
    params(DownloadQuery),
    responses(
        (status = 200, description = "The attachment's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn download(
    State(app): State<AppState>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    let signed = LocalSigned {
        chat: query.chat,
        attachment: query.attachment,
        expires: query.expires,
        sig: query.sig,
    };
    let grant = Grant::Download {
        filename: query.filename,
        content_type: query.content_type,
        thumbnail: query.thumbnail,
    };
    app.attachments
        .check(&signed, &grant)
        .ok_or(ApiError::Forbidden(
            "the download URL is not valid or has expired",
        ))?;
    let Grant::Download {
        filename,
        content_type,
        thumbnail,
    } = grant
    else {
        return Err(ApiError::NotFound("no attachment with that id"));
    };
    let key = if thumbnail {
        Storage::thumbnail_key(signed.chat, signed.attachment)
    } else {
        Storage::key(signed.chat, signed.attachment)
    };
    let object = match app.attachments.storage.store().get(&key).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::NotFound("no attachment with that id"))
        }
        Err(err) => return Err(unavailable(err).into()),
    };
    let mut headers = HeaderMap::new();
    let typed = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, typed);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(object.meta.size));
    if let Ok(disposition) = HeaderValue::from_str(&content_disposition(&filename)) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(DOWNLOAD_CACHE_CONTROL),
    );
    Ok((headers, Body::from_stream(object.into_stream())).into_response())
}
