//! Conditional reads. Every read answers with an `ETag` made of what the
//! answer depends on, known before the answer is built: the version of the
//! row it shows (the log position of the latest event that changed it), or,
//! for a list, its read model's checkpoint, with the caller and the query,
//! and, where it shows people's names, the version of their names
//! (`projections::NAMES_VERSION`).
//! A request whose `If-None-Match` names the current tag is answered
//! `304 Not Modified`, with no body, after the same access checks as a full
//! read.
//!
//! A read whose tag can be read apart from its answer (a list's, or one
//! booking's) keeps the answer it built in [`Pages`], so that the next time
//! the same caller asks the same, while the tag holds, the answer costs what
//! a `304` does.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use domain::values::Actor;
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

/// The request's `If-None-Match`: the tags the client holds, and what the
/// request asks for (its path and query), which names the answer [`Pages`]
/// keeps of it.
#[derive(Debug, Default)]
pub struct IfNoneMatch {
    held: Option<HeaderValue>,
    asked: String,
}

impl IfNoneMatch {
    /// Whether the request holds any tag at all: a poller's.
    pub fn is_conditional(&self) -> bool {
        self.held.is_some()
    }

    /// Whether the client holds `tag`, compared weakly as RFC 9110 asks of
    /// `If-None-Match`; `*` matches whatever exists.
    pub fn matches(&self, tag: &ETag) -> bool {
        let Some(held) = self.held.as_ref().and_then(|value| value.to_str().ok()) else {
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
        Ok(Self {
            held: parts.headers.get(IF_NONE_MATCH).cloned(),
            asked: (parts.uri.path_and_query()).map_or_else(String::new, ToString::to_string),
        })
    }
}

/// The answers of reads as last built, each kept with its tag under the
/// caller and what they asked, within a budget of bytes; the first kept go
/// first when it is spent.
pub struct Pages {
    kept: Mutex<Kept>,
    budget: usize,
}

/// Who asked for what.
type PageKey = (Actor, String);

#[derive(Default)]
struct Kept {
    pages: HashMap<PageKey, (u64, ETag, Bytes)>,
    /// Keys in the order they were kept, with the number each was kept
    /// under; a key kept again is found here twice, and only its newest
    /// number is still in `pages`.
    order: VecDeque<(u64, PageKey)>,
    bytes: usize,
    next: u64,
}

impl Pages {
    /// Pages kept within `budget` bytes of answers.
    pub fn new(budget: usize) -> Self {
        Self {
            kept: Mutex::default(),
            budget,
        }
    }

    /// Answers `actor`'s read: `304` when they hold the current tag, the kept
    /// answer when it was built as of that tag, or else the answer `build`
    /// reads, which is kept for next time. The current tag is read first
    /// (`tag`, an index lookup) only for a poller or when an answer is kept,
    /// so a first read costs no more than before.
    pub async fn answer<T: Serialize, E>(
        &self,
        actor: Actor,
        held: &IfNoneMatch,
        tag: impl Future<Output = Result<ETag, E>>,
        build: impl Future<Output = Result<(ETag, T), E>>,
    ) -> Result<Read<T>, E> {
        let key = (actor, held.asked.clone());
        let kept = self.lock().pages.contains_key(&key);
        if held.is_conditional() || kept {
            let tag = tag.await?;
            if held.matches(&tag) {
                return Ok(Read::NotModified(tag));
            }
            let page = (self.lock().pages.get(&key))
                .filter(|(_, kept_as, _)| *kept_as == tag)
                .map(|(_, _, body)| body.clone());
            if let Some(body) = page {
                return Ok(Read::Kept(tag, body));
            }
        }
        let (tag, body) = build.await?;
        match serde_json::to_vec(&body) {
            Ok(json) => {
                let json = Bytes::from(json);
                self.keep(key, tag.clone(), json.clone());
                Ok(Read::Kept(tag, json))
            }
            Err(_) => Ok(Read::Full(tag, body)),
        }
    }

    fn keep(&self, key: PageKey, tag: ETag, body: Bytes) {
        if body.len() > self.budget {
            return;
        }
        let mut kept = self.lock();
        let number = kept.next;
        kept.next += 1;
        kept.bytes += body.len();
        kept.order.push_back((number, key.clone()));
        if let Some((_, _, old)) = kept.pages.insert(key, (number, tag, body)) {
            kept.bytes -= old.len();
        }
        while kept.bytes > self.budget {
            let Some((number, key)) = kept.order.pop_front() else {
                break;
            };
            if kept
                .pages
                .get(&key)
                .is_some_and(|(kept_as, _, _)| *kept_as == number)
            {
                if let Some((_, _, gone)) = kept.pages.remove(&key) {
                    kept.bytes -= gone.len();
                }
            }
        }
        // Keys kept again leave their old numbers behind; drop them before
        // they outnumber the pages.
        if kept.order.len() > 2 * kept.pages.len() + 64 {
            let Kept { pages, order, .. } = &mut *kept;
            order.retain(|(number, key)| {
                pages
                    .get(key)
                    .is_some_and(|(kept_as, _, _)| kept_as == number)
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A read's answer: the JSON with its tag, or that the client's copy is current.
#[derive(Debug)]
pub enum Read<T> {
    /// `200` with the body.
    Full(ETag, T),
    /// `304` without one.
    NotModified(ETag),
    /// `200` with a body serialized before.
    Kept(ETag, Bytes),
}

impl<T: Serialize> IntoResponse for Read<T> {
    fn into_response(self) -> Response {
        // Like every authenticated answer, it is `Cache-Control: no-store`
        // (see `security_headers`): the client keeps its copy itself.
        match self {
            Read::Full(tag, body) => ([(ETAG, tag.header())], Json(body)).into_response(),
            Read::NotModified(tag) => {
                (StatusCode::NOT_MODIFIED, [(ETAG, tag.header())]).into_response()
            }
            Read::Kept(tag, json) => {
                let json_type = HeaderValue::from_static("application/json");
                ([(ETAG, tag.header()), (CONTENT_TYPE, json_type)], json).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(value: &str) -> IfNoneMatch {
        IfNoneMatch {
            held: HeaderValue::from_str(value).ok(),
            asked: String::new(),
        }
    }

    #[test]
    fn a_tag_matches_when_held_alone_in_a_list_weakly_or_as_a_star() {
        let tag = ETag::new(7, "scope");
        assert!(holding(&tag.0).matches(&tag));
        assert!(holding(&format!("\"other\", {}", tag.0)).matches(&tag));
        assert!(holding(&format!("W/{}", tag.0)).matches(&tag));
        assert!(holding("*").matches(&tag));
    }

    fn kept(pages: &Pages) -> (usize, usize, usize) {
        let kept = pages.lock();
        (kept.pages.len(), kept.order.len(), kept.bytes)
    }

    fn page(user: u128, asked: &str) -> PageKey {
        (
            Actor::new(uuid::Uuid::from_u128(user), domain::values::Role::Patient),
            asked.to_owned(),
        )
    }

    #[test]
    fn pages_past_the_budget_push_out_the_first_kept_and_a_page_kept_again_counts_once() {
        let pages = Pages::new(25);
        let body = Bytes::from_static(b"0123456789");
        for asked in ["a", "b"] {
            pages.keep(page(1, asked), ETag::new(1, asked), body.clone());
        }
        pages.keep(page(1, "a"), ETag::new(2, "a"), body.clone());
        assert_eq!(kept(&pages), (2, 3, 20));

        pages.keep(page(2, "a"), ETag::new(1, "a"), body.clone());
        // "b" was the first kept still there; "a" of user 1 was kept again after it.
        let held = pages.lock();
        assert!(!held.pages.contains_key(&page(1, "b")));
        assert!(held.pages.contains_key(&page(1, "a")));
        assert!(held.pages.contains_key(&page(2, "a")));
        assert_eq!(held.bytes, 20);
    }

    #[test]
    fn a_page_larger_than_the_whole_budget_is_not_kept() {
        let pages = Pages::new(4);
        pages.keep(
            page(1, "a"),
            ETag::new(1, "a"),
            Bytes::from_static(b"too long"),
        );
        assert_eq!(kept(&pages), (0, 0, 0));
    }

    #[test]
    fn a_tag_does_not_match_another_version_another_scope_or_no_header() {
        let tag = ETag::new(7, "scope");
        assert!(!IfNoneMatch::default().matches(&tag));
        assert!(!holding(&ETag::new(6, "scope").0).matches(&tag));
        assert!(!holding(&ETag::new(7, "other").0).matches(&tag));
    }
}
