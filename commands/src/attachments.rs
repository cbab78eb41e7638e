//! Where attachments' bytes are kept, and what a message is checked against
//! before it may carry them: the size and SHA-256 of the bytes actually
//! stored, looked at once, just before the chat decides.
//!
//! The store is any `object_store` backend: a local directory, or an
//! S3-compatible service the clients upload to and download from directly.

use std::sync::Arc;

use domain::attachment::{Observed, Sha256};
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use sha2::Digest;
use uuid::Uuid;

use crate::CommandError;

/// The object store attachments are kept in.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
}

impl Storage {
    /// Attachments kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The store itself.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The one object an attachment's bytes are kept in: named by its chat
    /// and its id, so that no upload URL can reach another chat's files.
    pub fn key(chat_id: Uuid, attachment_id: Uuid) -> Path {
        Path::from(format!("chats/{chat_id}/{attachment_id}"))
    }

    /// Where the thumbnail of an image attachment is kept: beside it.
    pub fn thumbnail_key(chat_id: Uuid, attachment_id: Uuid) -> Path {
        Path::from(format!("chats/{chat_id}/{attachment_id}.thumbnail.png"))
    }

    /// The whole object at `key`.
    pub async fn bytes(&self, key: &Path) -> Result<bytes::Bytes, CommandError> {
        let object = self.store.get(key).await.map_err(unavailable)?;
        object.bytes().await.map_err(unavailable)
    }

    /// Stores `bytes` at `key`, replacing what was there.
    pub async fn put(&self, key: &Path, bytes: Vec<u8>) -> Result<(), CommandError> {
        self.store
            .put(key, bytes.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// What the store holds for each attachment, in order: its size and the
    /// SHA-256 of its bytes, read through once, or nothing when no bytes
    /// were uploaded. A store that cannot be reached is unavailable.
    pub async fn observe(
        &self,
        chat_id: Uuid,
        attachment_ids: &[Uuid],
    ) -> Result<Vec<Observed>, CommandError> {
        let mut observed = Vec::with_capacity(attachment_ids.len());
        for &attachment_id in attachment_ids {
            observed.push(Observed {
                attachment_id,
                stored: self.digest(&Self::key(chat_id, attachment_id)).await?,
            });
        }
        Ok(observed)
    }

    /// The size and SHA-256 of the object at `key`, streamed, so memory
    /// does not grow with the file.
    async fn digest(&self, key: &Path) -> Result<Option<(u64, Sha256)>, CommandError> {
        let object = match self.store.get(key).await {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(unavailable(err)),
        };
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut chunks = object.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(unavailable)?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some((size, Sha256::of_digest(hasher.finalize().into()))))
    }
}

/// A failure of the object store: the command cannot be decided now.
pub fn unavailable(err: object_store::Error) -> CommandError {
    CommandError::Unavailable(Box::new(err))
}
