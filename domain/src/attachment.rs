//! Files shared in chats: what an announced attachment must be (a sanitised
//! name, an allowed type, a size within the limit, a SHA-256 digest), and the
//! facts about its stored bytes a message is checked against.
//!
//! The bytes themselves live in an object store outside the log; a chat
//! records only that an attachment was announced and which message uses it.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;
use crate::values::text_value;

/// Most bytes of a file name kept: what common file systems allow.
const MAX_FILENAME_BYTES: usize = 255;

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 10;

/// The content types accepted by default: common images, PDF, the office
/// documents of Microsoft Office and OpenDocument, and plain text.
pub const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "text/plain",
];

/// The default largest attachment: 25 MB.
pub const DEFAULT_MAX_SIZE: u64 = 25 * 1024 * 1024;

text_value!(
    /// A file name safe to store, show and send back in a
    /// `Content-Disposition` header: the last component of whatever path was
    /// given, with control characters, quotes, backslashes and other
    /// characters that mean something to a shell or a header replaced by `_`.
    FileName
);

impl FileName {
    /// Sanitises `raw`; refuses a name with nothing left once sanitised.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
        let mut name: String = last
            .chars()
            .map(|c| {
                if c.is_control()
                    || matches!(
                        c,
                        '"' | '\'' | ';' | '<' | '>' | '|' | '*' | '?' | ':' | '`' | '$' | '%'
                    )
                {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        name = name.trim().trim_start_matches('.').trim().to_owned();
        while name.len() > MAX_FILENAME_BYTES {
            name.pop();
        }
        if name.is_empty() {
            return Err(ValidationError::new(
                "filename",
                "must name a file: nothing is left of it once sanitised",
            ));
        }
        Ok(Self(name))
    }
}

text_value!(
    /// A media type without parameters, lower case: `type/subtype`.
    ContentType
);

impl ContentType {
    /// Accepts `type/subtype` made of the characters RFC 6838 allows.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into().trim().to_ascii_lowercase();
        let token = |part: &str| {
            !part.is_empty()
                && part.len() <= 127
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        };
        match raw.split_once('/') {
            Some((kind, subtype)) if token(kind) && token(subtype) => Ok(Self(raw)),
            _ => Err(ValidationError::new(
                "content_type",
                "must be a media type such as image/png",
            )),
        }
    }

    /// Whether it is an image Herald makes thumbnails of.
    pub fn is_image(&self) -> bool {
        self.0.starts_with("image/")
    }
}

text_value!(
    /// A SHA-256 digest as 64 lower-case hexadecimal digits.
    Sha256
);

impl Sha256 {
    /// Accepts 64 hexadecimal digits, in either case.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into().to_ascii_lowercase();
        if raw.len() == 64 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                "sha256",
                "must be the SHA-256 of the file as 64 hexadecimal digits",
            ))
        }
    }

    /// The digest of 32 bytes.
    pub fn of_digest(bytes: [u8; 32]) -> Self {
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// What a deployment accepts as an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentLimits {
    /// The largest file, in bytes.
    pub max_size: u64,
    /// The media types accepted.
    pub content_types: Vec<ContentType>,
}

impl Default for AttachmentLimits {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            content_types: DEFAULT_CONTENT_TYPES
                .iter()
                .map(|kind| ContentType((*kind).to_owned()))
                .collect(),
        }
    }
}

impl AttachmentLimits {
    /// Refuses a file of a type not allowed or a size out of bounds, naming
    /// the field.
    pub fn check(&self, content_type: &ContentType, size: u64) -> Result<(), ValidationError> {
        if !self.content_types.contains(content_type) {
            return Err(ValidationError::new(
                "content_type",
                format!(
                    "{} is not accepted; accepted are {}",
                    content_type.as_str(),
                    self.content_types
                        .iter()
                        .map(ContentType::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if size == 0 || size > self.max_size {
            return Err(ValidationError::new(
                "size",
                format!("must be between 1 and {} bytes", self.max_size),
            ));
        }
        Ok(())
    }
}

/// What the object store holds for an attachment a message is to carry,
/// looked at just before the message is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The attachment.
    pub attachment_id: Uuid,
    /// Its stored bytes' size and digest; `None` when nothing was uploaded.
    pub stored: Option<(u64, Sha256)>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_keeps_only_its_last_component_and_safe_characters() {
        let name = |raw: &str| FileName::parse(raw).unwrap().to_string();
        assert_eq!(name("../../etc/passwd"), "passwd");
        assert_eq!(name("C:\\Users\\me\\scan.pdf"), "scan.pdf");
        assert_eq!(name("a\"b;c\r\n.png"), "a_b_c__.png");
        assert_eq!(name("  .hidden.txt "), "hidden.txt");
        assert_eq!(name("анализы.pdf"), "анализы.pdf");
        assert!(FileName::parse("..").is_err());
        assert!(FileName::parse("dir/").is_err());
        assert!(FileName::parse("x".repeat(300)).unwrap().as_str().len() <= 255);
    }

    #[test]
    fn a_content_type_is_a_bare_media_type_in_lower_case() {
        assert_eq!(
            ContentType::parse("Image/PNG").unwrap().as_str(),
            "image/png"
        );
        assert!(ContentType::parse("image").is_err());
        assert!(ContentType::parse("text/plain; charset=utf-8").is_err());
    }

    #[test]
    fn a_digest_is_64_hexadecimal_digits() {
        assert!(Sha256::parse("ab".repeat(32)).is_ok());
        assert_eq!(
            Sha256::parse("AB".repeat(32)).unwrap().as_str(),
            "ab".repeat(32)
        );
        assert!(Sha256::parse("ab".repeat(31)).is_err());
        assert!(Sha256::parse("zz".repeat(32)).is_err());
        assert_eq!(Sha256::of_digest([0xab; 32]).as_str(), "ab".repeat(32));
    }

    #[test]
    fn the_limits_refuse_other_types_and_sizes_out_of_bounds() {
        let limits = AttachmentLimits {
            max_size: 100,
            ..AttachmentLimits::default()
        };
        let png = ContentType::parse("image/png").unwrap();
        assert!(limits.check(&png, 100).is_ok());
        assert_eq!(limits.check(&png, 101).unwrap_err().field, "size");
        assert_eq!(limits.check(&png, 0).unwrap_err().field, "size");
        let exe = ContentType::parse("application/x-msdownload").unwrap();
        assert_eq!(limits.check(&exe, 10).unwrap_err().field, "content_type");
    }
}
