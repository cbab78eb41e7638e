//! Conditional reads. Every read answers with an `ETag` made of what the
//! answer depends on, known before the answer is built: the version of the
//! row it shows (the log position of the latest event that changed it), or,
//! for a list, its read model's checkpoint, with the caller and the query,
//! and, where it shows people's names, the version of their names
//! (`projections::NAMES_VERSION`).
//! A request whose `If-None-Match` names the current tag is answered
//! `304 Not Modified`, with no body, after the same access checks as a full
//! read.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};

use axum::extract::FromRequestParts;
use axum::http::header::{ETAG, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An entity tag, quoted as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// The tag of an answer built from rows as of `version`, for `scope`:
    /// whatever else shapes the answer (the caller, the query), so that two
    /// answers that differ never share a tag.
    pub fn new(version: i64, scope: impl Hash) -> Self {
        let mut hasher = DefaultHasher::new();
        scope.hash(&mut hasher);
        Self(format!("\"{version}-{:016x}\"", hasher.finish()))
    }

    fn header(&self) -> HeaderValue {
        // Digits, a dash and hex digits in quotes: always a valid header value.
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
    }
}

/// The request's `If-None-Match`: the tags the client holds.
#[derive(Debug, Default)]
pub struct IfNoneMatch(Option<HeaderValue>);

impl IfNoneMatch {
    /// Whether the request holds any tag at all: a poller's.
    pub fn is_conditional(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the client holds `tag`, compared weakly as RFC 9110 asks of
    /// `If-None-Match`; `*` matches whatever exists.
    pub fn matches(&self, tag: &ETag) -> bool {
        let Some(held) = self.0.as_ref().and_then(|value| value.to_str().ok()) else {
            return false;
        };
        held.split(',')
            .map(str::trim)
            .any(|held| held == "*" || held.strip_prefix("W/").unwrap_or(held) == tag.0)
    }

    /// `body` with its tag, or `304` when the client already holds `tag`.
    pub fn answer<T>(&self, tag: ETag, body: T) -> Read<T> {
        if self.matches(&tag) {
            Read::NotModified(tag)
        } else {
            Read::Full(tag, body)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(IF_NONE_MATCH).cloned()))
    }
}

/// A read's answer: the JSON with its tag, or that the client's copy is current.
#[derive(Debug)]
pub enum Read<T> {
    /// `200` with the body.
    Full(ETag, T),
    /// `304` without one.
    NotModified(ETag),
}

impl<T: Serialize> IntoResponse for Read<T> {
    fn into_response(self) -> Response {
        let (status, tag, body) = match self {
            Read::Full(tag, body) => (StatusCode::OK, tag, Some(body)),
            Read::NotModified(tag) => (StatusCode::NOT_MODIFIED, tag, None),
        };
        // Like every authenticated answer, it is `Cache-Control: no-store`
        // (see `security_headers`): the client keeps its copy itself.
        let etag = [(ETAG, tag.header())];
        match body {
            Some(body) => (status, etag, Json(body)).into_response(),
            None => (status, etag).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(value: &str) -> IfNoneMatch {
        IfNoneMatch(HeaderValue::from_str(value).ok())
    }

    #[test]
    fn a_tag_matches_when_held_alone_in_a_list_weakly_or_as_a_star() {
        let tag = ETag::new(7, "scope");
        assert!(holding(&tag.0).matches(&tag));
        assert!(holding(&format!("\"other\", {}", tag.0)).matches(&tag));
        assert!(holding(&format!("W/{}", tag.0)).matches(&tag));
        assert!(holding("*").matches(&tag));
    }

    #[test]
    fn a_tag_does_not_match_another_version_another_scope_or_no_header() {
        let tag = ETag::new(7, "scope");
        assert!(!IfNoneMatch::default().matches(&tag));
        assert!(!holding(&ETag::new(6, "scope").0).matches(&tag));
        assert!(!holding(&ETag::new(7, "other").0).matches(&tag));
    }
}
