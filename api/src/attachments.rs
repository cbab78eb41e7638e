//! Where chat attachments are stored and how clients reach their bytes:
//! through signed, expiring URLs for one object each. By default the store is
//! a local directory and Herald serves those URLs itself, signed with its own
//! key (`routes/attachments.rs`); with `HERALD_OBJECT_STORE_URL=s3://…` the
//! URLs are the S3-compatible store's own presigned ones and the bytes never
//! pass through Herald.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use commands::attachments::Storage;
use commands::{CommandError, Metadata, WriteSide};
use domain::attachment::{AttachmentLimits, ContentType, DEFAULT_CONTENT_TYPES, DEFAULT_MAX_SIZE};
use domain::chat::{Chat, ChatCommand};
use domain::values::Actor;
use domain::DomainError;
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use url::Url;
use uuid::Uuid;

use crate::startup::BoxError;

mod sigv4;

/// Settings of attachments.
#[derive(Debug, Args)]
pub struct AttachmentArgs {
    /// Where attachments are stored: `s3://<bucket>` for an
    /// S3-compatible store (with `HERALD_S3_*`); when absent, the local
    /// directory `HERALD_ATTACHMENTS_DIR`, served by Herald itself.
    #[arg(long, env = "HERALD_OBJECT_STORE_URL")]
    pub object_store_url: Option<Url>,

    /// The local directory attachments are kept in when no
    /// `HERALD_OBJECT_STORE_URL` is set; created when missing.
    #[arg(long, env = "HERALD_ATTACHMENTS_DIR", default_value = "attachments")]
    pub attachments_dir: std::path::PathBuf,

    /// The S3-compatible service's URL, such as `http://127.0.0.1:9000`;
    /// AWS itself when absent.
    #[arg(long, env = "HERALD_S3_ENDPOINT")]
    pub s3_endpoint: Option<Url>,

    /// The S3 region.
    #[arg(long, env = "HERALD_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// The S3 access key id.
    #[arg(long, env = "HERALD_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// The S3 secret access key.
    #[arg(long, env = "HERALD_S3_SECRET_ACCESS_KEY", hide_env_values = true, value_parser = crate::config::secret)]
    pub s3_secret_access_key: Option<SecretString>,

    /// Signs the upload and download URLs Herald serves for a local
    /// directory; at least 32 bytes. By default a key derived from the JWT
    /// secret, so every instance sharing it signs alike.
    #[arg(long, env = "HERALD_ATTACHMENT_SECRET", hide_env_values = true, value_parser = crate::config::secret)]
    pub attachment_secret: Option<SecretString>,

    /// The largest attachment, in bytes.
    #[arg(long, env = "HERALD_ATTACHMENT_MAX_SIZE", default_value_t = DEFAULT_MAX_SIZE)]
    pub attachment_max_size: u64,

    /// The media types accepted (comma-separated); by default common images,
    /// PDF, office documents and plain text.
    #[arg(long, env = "HERALD_ATTACHMENT_TYPES", value_delimiter = ',', default_values_t = DEFAULT_CONTENT_TYPES.iter().map(|kind| (*kind).to_owned()).collect::<Vec<_>>())]
    pub attachment_types: Vec<String>,

    /// How long an upload or download URL stays valid.
    #[arg(long, env = "HERALD_ATTACHMENT_URL_TTL", default_value = "10m")]
    pub attachment_url_ttl: humantime::Duration,

    /// How long an uploaded file may wait for a message to carry it before
    /// it is deleted.
    #[arg(long, env = "HERALD_ATTACHMENT_UNUSED_TTL", default_value = "1d")]
    pub attachment_unused_ttl: humantime::Duration,
}

/// HMAC-SHA256, which signs Herald's own attachment URLs.
type HmacSha256 = Hmac<Sha256>;

/// How signed URLs are made.
#[derive(Debug)]
enum Urls {
    /// Herald serves them under `base`, signed with `secret`.
    Local { base: Url, secret: SecretString },
    /// The S3-compatible store serves them, presigned by Herald.
    S3(S3Urls),
}

/// What Herald presigns an S3-compatible store's URLs with.
#[derive(Debug)]
struct S3Urls {
    /// The store, for its credentials.
    s3: Arc<AmazonS3>,
    /// The bucket's URL, which objects' keys follow.
    bucket: Url,
    /// The region URLs are signed for.
    region: String,
}

impl S3Urls {
    /// A URL of the object at `key` that lets its holder make the
    /// `method` request with `headers`, answered with the response headers
    /// `query` asks for, for `ttl`.
    async fn presign(
        &self,
        method: &str,
        key: &object_store::path::Path,
        headers: &[(&str, String)],
        query: &[(&str, &str)],
        ttl: Duration,
    ) -> Result<Url, BoxError> {
        let credential = self.s3.credentials().get_credential().await?;
        let presign = sigv4::Presign {
            method,
            url: self.bucket.join(key.as_ref())?,
            headers,
            query,
            expires_in: ttl,
        };
        Ok(presign.sign(&credential, &self.region, Utc::now()))
    }
}

/// Attachments as a running Herald keeps them.
#[derive(Debug)]
pub struct Attachments {
    /// The object store.
    pub storage: Storage,
    /// What a deployment accepts.
    pub limits: AttachmentLimits,
    /// How long a signed URL stays valid.
    pub url_ttl: Duration,
    /// How long an upload waits for a message before it is deleted.
    pub unused_ttl: Duration,
    urls: Urls,
}

/// A signed URL and when it stops working.
#[derive(Debug, Clone)]
pub struct SignedUrl {
    /// The URL.
    pub url: Url,
    /// Headers the request must carry as they are, part of what is signed.
    pub headers: Vec<(&'static str, String)>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl Attachments {
    /// Attachments in the local directory `dir`, whose URLs Herald serves
    /// at `public_url` and signs with `secret`.
    pub fn local(
        dir: &std::path::Path,
        public_url: &str,
        secret: SecretString,
        limits: AttachmentLimits,
    ) -> Result<Self, BoxError> {
        if secret.expose_secret().len() < 32 {
            return Err("HERALD_ATTACHMENT_SECRET must be at least 32 bytes".into());
        }
        std::fs::create_dir_all(dir).map_err(|err| {
            format!(
                "cannot create {} (HERALD_ATTACHMENTS_DIR): {err}",
                dir.display()
            )
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            storage: Storage::new(Arc::new(store)),
            limits,
            url_ttl: Duration::from_secs(600),
            unused_ttl: Duration::from_secs(24 * 3600),
            urls: Urls::Local {
                // A base ending in `/`, so that the routes join beneath it.
                base: Url::parse(&format!("{}/", public_url.trim_end_matches('/')))?,
                secret,
            },
        })
    }

    /// Attachments in an S3-compatible bucket named by `url` (`s3://bucket`).
    pub fn s3(
        args: &AttachmentArgs,
        url: &Url,
        limits: AttachmentLimits,
    ) -> Result<Self, BoxError> {
        let bucket = match url.host_str() {
            Some(bucket) if url.scheme() == "s3" && url.path().trim_matches('/').is_empty() => {
                bucket
            }
            _ => return Err("HERALD_OBJECT_STORE_URL must be s3://<bucket>".into()),
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&args.s3_region);
        // Path-style URLs, as object_store addresses the bucket too.
        let service = match &args.s3_endpoint {
            Some(endpoint) => endpoint.as_str().trim_end_matches('/').to_owned(),
            None => format!("https://s3.{}.amazonaws.com", args.s3_region),
        };
        let bucket_url = Url::parse(&format!("{service}/{bucket}/"))?;
        if let Some(endpoint) = &args.s3_endpoint {
            builder = builder
                .with_endpoint(&service)
                .with_allow_http(endpoint.scheme() == "http")
                .with_virtual_hosted_style_request(false);
        }
        if let Some(key) = &args.s3_access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &args.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let s3 = Arc::new(builder.build()?);
        Ok(Self {
            storage: Storage::new(s3.clone()),
            limits,
            url_ttl: *args.attachment_url_ttl,
            unused_ttl: *args.attachment_unused_ttl,
            urls: Urls::S3(S3Urls {
                s3,
                bucket: bucket_url,
                region: args.s3_region.clone(),
            }),
        })
    }

    /// Attachments as configured; without `HERALD_ATTACHMENT_SECRET`, local
    /// URLs are signed with a key derived from `jwt_secret`.
    pub fn from_args(
        args: &AttachmentArgs,
        public_url: &str,
        jwt_secret: Option<SecretString>,
    ) -> Result<Self, BoxError> {
        let limits = limits(args)?;
        let attachments = match &args.object_store_url {
            Some(url) => Self::s3(args, url, limits)?,
            None => {
                let secret = match (&args.attachment_secret, jwt_secret) {
                    (Some(secret), _) => secret.clone(),
                    (None, Some(root)) => derived_secret(&root),
                    (None, None) => {
                        return Err("HERALD_ATTACHMENT_SECRET or HERALD_JWT_SECRET is required \
                                    to sign the URLs of attachments"
                            .into())
                    }
                };
                Self::local(&args.attachments_dir, public_url, secret, limits)?
            }
        };
        Ok(attachments.lasting(*args.attachment_url_ttl, *args.attachment_unused_ttl))
    }

    /// The same attachments with other lifetimes of URLs and of unused uploads.
    pub fn lasting(mut self, url_ttl: Duration, unused_ttl: Duration) -> Self {
        self.url_ttl = url_ttl;
        self.unused_ttl = unused_ttl;
        self
    }

    /// Whether the bytes go through Herald's own routes.
    pub fn is_local(&self) -> bool {
        matches!(self.urls, Urls::Local { .. })
    }

    /// A URL the client `PUT`s exactly the attachment's bytes to, once.
    /// An S3-compatible store is made to check both: the URL signs the
    /// bytes' SHA-256 and `If-None-Match: *`.
    pub async fn upload_url(
        &self,
        chat_id: Uuid,
        attachment_id: Uuid,
        size: u64,
        sha256: &domain::attachment::Sha256,
    ) -> Result<SignedUrl, BoxError> {
        let expires_at = self.expiry();
        match &self.urls {
            Urls::Local { base, secret } => {
                let grant = Grant::Upload { size };
                Ok(SignedUrl {
                    url: local_url(base, secret, chat_id, attachment_id, &grant, expires_at)?,
                    headers: Vec::new(),
                    expires_at,
                })
            }
            Urls::S3(s3) => {
                let headers = vec![
                    ("if-none-match", "*".to_owned()),
                    ("x-amz-content-sha256", sha256.to_string()),
                ];
                let key = Storage::key(chat_id, attachment_id);
                let url = s3.presign("PUT", &key, &headers, &[], self.url_ttl).await?;
                Ok(SignedUrl {
                    url,
                    headers,
                    expires_at,
                })
            }
        }
    }

    /// A URL that answers the attachment's bytes, or its thumbnail's, as a
    /// download named `filename`.
    pub async fn download_url(
        &self,
        chat_id: Uuid,
        attachment_id: Uuid,
        filename: &str,
        content_type: &str,
        thumbnail: bool,
    ) -> Result<SignedUrl, BoxError> {
        let expires_at = self.expiry();
        let url = match &self.urls {
            Urls::Local { base, secret } => {
                let grant = Grant::Download {
                    filename: filename.to_owned(),
                    content_type: content_type.to_owned(),
                    thumbnail,
                };
                local_url(base, secret, chat_id, attachment_id, &grant, expires_at)?
            }
            Urls::S3(s3) => {
                let key = if thumbnail {
                    Storage::thumbnail_key(chat_id, attachment_id)
                } else {
                    Storage::key(chat_id, attachment_id)
                };
                // The store answers with the headers Herald's own route
                // answers with: the URL asks for them.
                let disposition = content_disposition(filename);
                let answer = [
                    ("response-cache-control", DOWNLOAD_CACHE_CONTROL),
                    ("response-content-disposition", disposition.as_str()),
                    ("response-content-type", content_type),
                ];
                s3.presign("GET", &key, &[], &answer, self.url_ttl).await?
            }
        };
        Ok(SignedUrl {
            url,
            headers: Vec::new(),
            expires_at,
        })
    }

    /// Checks a signed local URL's parameters; `None` when the signature is
    /// wrong or the URL expired.
    pub fn check(&self, signed: &LocalSigned, grant: &Grant) -> Option<()> {
        let Urls::Local { secret, .. } = &self.urls else {
            return None;
        };
        if signed.expires < Utc::now().timestamp() {
            return None;
        }
        let tag = hex::decode(&signed.sig).ok()?;
        mac(
            secret,
            signed.chat,
            signed.attachment,
            grant,
            signed.expires,
        )
        .verify_slice(&tag)
        .ok()
    }

    fn expiry(&self) -> DateTime<Utc> {
        Utc::now()
            + chrono::TimeDelta::from_std(self.url_ttl).unwrap_or(chrono::TimeDelta::minutes(10))
    }
}

/// Most unused uploads deleted in one sweep.
const SWEEP_BATCH: i64 = 100;

impl Attachments {
    /// Deletes the stored bytes of uploads announced longer than
    /// [`Attachments::unused_ttl`] ago that no message carries, each once;
    /// answers how many. The chats read model names the candidates; each
    /// chat then gives its upload up (`ExpireAttachment`) before the bytes
    /// go, so a message sent meanwhile either carries it, and keeps it, or
    /// is refused.
    pub async fn sweep_unused(
        &self,
        pool: &sqlx::PgPool,
        write: &WriteSide,
    ) -> Result<usize, BoxError> {
        let ttl = chrono::TimeDelta::from_std(self.unused_ttl)?;
        let unused: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT a.chat_id, a.attachment_id FROM rm_chat_attachments a
              WHERE a.seq IS NULL AND a.announced_at < now() - $1
                AND NOT EXISTS (SELECT 1 FROM attachment_deletions d
                                 WHERE d.attachment_id = a.attachment_id)
              ORDER BY a.announced_at
              LIMIT $2",
        )
        .bind(ttl)
        .bind(SWEEP_BATCH)
        .fetch_all(pool)
        .await?;
        let mut deleted = 0;
        for &(chat_id, attachment_id) in &unused {
            let command = ChatCommand::ExpireAttachment {
                actor: Actor::system(),
                attachment_id,
                at: Utc::now(),
            };
            let metadata = Metadata::of_herald(format!("attachment-sweep/{attachment_id}"));
            match write.execute::<Chat>(chat_id, command, &metadata).await {
                Ok(_) => {}
                // A message carries it after all; the read model will say so.
                Err(CommandError::Rejected(DomainError::AttachmentInUse)) => continue,
                Err(err) => return Err(err.into()),
            }
            match self
                .storage
                .store()
                .delete(&Storage::key(chat_id, attachment_id))
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
            sqlx::query(
                "INSERT INTO attachment_deletions (attachment_id) VALUES ($1)
                 ON CONFLICT DO NOTHING",
            )
            .bind(attachment_id)
            .execute(pool)
            .await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Sweeps unused uploads every `every` until `stop` completes.
    pub async fn keep_sweeping(
        self: Arc<Self>,
        pool: sqlx::PgPool,
        write: Arc<WriteSide>,
        every: Duration,
        stop: crate::background::StopSignal,
    ) {
        tokio::pin!(stop);
        loop {
            match self.sweep_unused(&pool, &write).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "deleted uploads no message carried"),
                Err(err) => tracing::warn!(%err, "cannot delete unused uploads"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// A key of its own for attachment URLs, derived from `root` (the JWT
/// secret): a URL's signature says nothing about the tokens' key.
fn derived_secret(root: &SecretString) -> SecretString {
    let mut mac = HmacSha256::new_from_slice(root.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(b"herald attachment URLs");
    SecretString::from(hex::encode(mac.finalize().into_bytes()))
}

/// What a signed local URL lets its holder do with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Upload at most `size` bytes.
    Upload {
        /// The announced size.
        size: u64,
    },
    /// Download it, or its thumbnail, as `filename`.
    Download {
        /// The sanitised name.
        filename: String,
        /// The media type it is served as.
        content_type: String,
        /// Whether it is the thumbnail.
        thumbnail: bool,
    },
}

impl Grant {
    /// The grant's part of the signed text.
    fn signed_text(&self) -> String {
        match self {
            Self::Upload { size } => format!("PUT\n{size}"),
            Self::Download {
                filename,
                content_type,
                thumbnail,
            } => format!("GET\n{filename}\n{content_type}\n{thumbnail}"),
        }
    }
}

/// The signed parameters of a local upload or download URL.
#[derive(Debug, Clone)]
pub struct LocalSigned {
    /// The chat.
    pub chat: Uuid,
    /// The attachment.
    pub attachment: Uuid,
    /// Unix seconds after which the URL no longer works.
    pub expires: i64,
    /// The HMAC-SHA256 of the rest, hexadecimal.
    pub sig: String,
}

fn mac(
    secret: &SecretString,
    chat: Uuid,
    attachment: Uuid,
    grant: &Grant,
    expires: i64,
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(format!("{chat}\n{attachment}\n{expires}\n{}", grant.signed_text()).as_bytes());
    mac
}

fn local_url(
    base: &Url,
    secret: &SecretString,
    chat: Uuid,
    attachment: Uuid,
    grant: &Grant,
    expires_at: DateTime<Utc>,
) -> Result<Url, BoxError> {
    let expires = expires_at.timestamp();
    let sig = hex::encode(
        mac(secret, chat, attachment, grant, expires)
            .finalize()
            .into_bytes(),
    );
    let (path, extra) = match grant {
        Grant::Upload { size } => ("attachments/upload", vec![("size", size.to_string())]),
        Grant::Download {
            filename,
            content_type,
            thumbnail,
        } => (
            "attachments/download",
            vec![
                ("filename", filename.clone()),
                ("content_type", content_type.clone()),
                ("thumbnail", thumbnail.to_string()),
            ],
        ),
    };
    let mut url = base.join(path)?;
    let mut query = url.query_pairs_mut();
    query
        .append_pair("chat", &chat.to_string())
        .append_pair("attachment", &attachment.to_string())
        .append_pair("expires", &expires.to_string());
    for (name, value) in extra {
        query.append_pair(name, &value);
    }
    query.append_pair("sig", &sig);
    drop(query);
    Ok(url)
}

/// How a downloaded attachment may be cached: by nobody.
pub const DOWNLOAD_CACHE_CONTROL: &str = "private, no-store";

/// `attachment; filename="…"` for a sanitised name, with the RFC 6266
/// `filename*` form for names beyond ASCII.
pub fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// The configured limits, each type checked.
fn limits(args: &AttachmentArgs) -> Result<AttachmentLimits, BoxError> {
    let content_types = args
        .attachment_types
        .iter()
        .map(|kind| ContentType::parse(kind.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("HERALD_ATTACHMENT_TYPES: {err}"))?;
    Ok(AttachmentLimits {
        max_size: args.attachment_max_size,
        content_types,
    })
}
