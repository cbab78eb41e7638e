//! Thumbnails of the images messages carry: a follower of the log that, for
//! each image a sent message carries, reads the stored bytes, makes a
//! thumbnail at most [`THUMBNAIL_SIDE`] pixels a side, stores it beside the
//! image as a PNG, and records it in the chat (`RecordThumbnail`), so that
//! the read model learns of it from the log.
//!
//! It is an [`EffectFollower`] like the payment process manager: storing a
//! thumbnail again overwrites it with the same bytes, and the command is
//! keyed by the entry, so an entry acted on twice changes nothing. A store
//! or database that is away is waited out; bytes that are no image are set
//! aside as a dead letter.

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;

use domain::access::AggregateKind;
use domain::chat::{Chat, ChatCommand, ChatEvent};
use domain::values::Actor;
use herald_nats::follower::{EffectFollower, Follower, ReactError, Source};
use herald_nats::{locks, LogEntry};
use uuid::Uuid;

use crate::attachments::Storage;
use crate::process_manager::caused_by;
use crate::{CommandError, WriteSide};

/// Its name in `projection_checkpoints` and `projection_dead_letters`.
pub const CHECKPOINT: &str = "attachment-thumbnails";

/// The longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

/// Why making a thumbnail has to wait: the store or the database is away.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ThumbnailError(#[from] CommandError);

impl From<CommandError> for ReactError<ThumbnailError> {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Unavailable(_) | CommandError::Conflict => Self::Later(err.into()),
            other => Self::Never(other.to_string()),
        }
    }
}

/// Makes the thumbnails of images messages carry.
pub struct Thumbnails {
    write: Arc<WriteSide>,
    storage: Storage,
    source: Source,
}

impl Thumbnails {
    /// Thumbnails of the images kept in `storage`, recorded through `write`,
    /// following the log of `source`.
    pub fn new(write: Arc<WriteSide>, storage: Storage, source: Source) -> Self {
        Self {
            write,
            storage,
            source,
        }
    }

    /// Waits to become the active instance and makes thumbnails until
    /// `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.source.follow_effects(&self, shutdown).await;
    }

    async fn act(&self, entry: &LogEntry) -> Result<(), ReactError<ThumbnailError>> {
        let chat_id = Uuid::parse_str(&entry.aggregate_id)
            .map_err(|err| ReactError::Never(format!("aggregate id is not a UUID: {err}")))?;
        let event = entry
            .decode::<ChatEvent>()
            .map_err(|err| ReactError::Never(format!("cannot decode: {err}")))?;
        let ChatEvent::MessageSent { attachments, .. } = event else {
            return Ok(());
        };
        if attachments.is_empty() {
            return Ok(());
        }
        let chat = self.write.load::<Chat>(chat_id).await?;
        for attachment_id in attachments {
            if !chat.needs_thumbnail(attachment_id) {
                continue;
            }
            let image = self
                .storage
                .bytes(&Storage::key(chat_id, attachment_id))
                .await?;
            let thumbnail = thumbnail(&image).map_err(|err| {
                ReactError::Never(format!("attachment {attachment_id} is no image: {err}"))
            })?;
            self.storage
                .put(&Storage::thumbnail_key(chat_id, attachment_id), thumbnail)
                .await?;
            let command = ChatCommand::RecordThumbnail {
                actor: Actor::system(),
                attachment_id,
                at: chrono::Utc::now(),
            };
            let follower = format!("{CHECKPOINT}/{attachment_id}");
            let metadata = caused_by(entry, &follower, "RecordThumbnail", chat_id);
            self.write
                .execute::<Chat>(chat_id, command, &metadata)
                .await?;
        }
        Ok(())
    }
}

/// A PNG of `image` scaled to fit [`THUMBNAIL_SIDE`] pixels a side.
pub fn thumbnail(image: &[u8]) -> Result<Vec<u8>, image::ImageError> {
    let decoded = image::load_from_memory(image)?;
    let small = decoded.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    let mut png = Cursor::new(Vec::new());
    small.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

impl Follower for Thumbnails {
    const BATCH: usize = 100;

    fn name(&self) -> &str {
        CHECKPOINT
    }

    fn follows(&self, entry: &LogEntry) -> bool {
        AggregateKind::parse(&entry.aggregate_type) == Some(AggregateKind::Chat)
            && entry.event_type == "MessageSent"
    }
}

impl EffectFollower for Thumbnails {
    type Later = ThumbnailError;
    const LOCK: i64 = locks::THUMBNAILS;

    fn react(
        &self,
        entry: &LogEntry,
    ) -> impl Future<Output = Result<(), ReactError<ThumbnailError>>> + Send {
        self.act(entry)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbnail_fits_in_its_square_and_keeps_the_proportions() {
        let picture = image::RgbImage::from_pixel(1024, 512, image::Rgb([200, 30, 30]));
        let mut png = Cursor::new(Vec::new());
        picture.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let small = image::load_from_memory(&thumbnail(png.get_ref()).unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (256, 128));
        assert!(thumbnail(b"%PDF-1.7 not a picture").is_err());
    }
}
