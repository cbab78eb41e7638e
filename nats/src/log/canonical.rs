//! The canonical form a log entry is hashed as (see [`canonical_bytes`]).
//!
//! An entry's JSON documents, its payload and metadata, are written with every
//! object's keys in ascending byte order and no whitespace. They arrive either
//! as [`serde_json::Value`]s, or as the text Postgres prints for `jsonb`, which
//! the verifier reads to skip building a tree of every document: that text is
//! rewritten directly, and anything in it the direct rewrite is not sure of is
//! handed to the tree instead, so both give the same bytes.

use std::io::Write;
use std::ops::Range;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::LogEntry;

/// The bytes an entry is hashed as: the JSON object
/// `{aggregate_id, aggregate_type, event_id, event_type, event_version, metadata,
/// payload, position, recorded_at, sequence}` with the keys of every object, at
/// every depth, in ascending byte order, no whitespace, strings escaped as
/// RFC 8259 requires (only `"`, `\` and control characters; other characters
/// as UTF-8), and `recorded_at` as RFC 3339 UTC with six fractional digits and
/// `Z`, the precision Postgres stores.
pub fn canonical_bytes(entry: &LogEntry) -> Vec<u8> {
    Fields {
        position: entry.position,
        event_id: entry.event_id,
        aggregate_type: &entry.aggregate_type,
        aggregate_id: &entry.aggregate_id,
        sequence: entry.sequence,
        event_type: &entry.event_type,
        event_version: &entry.event_version,
        recorded_at: entry.recorded_at,
    }
    .canonical(&entry.payload, &entry.metadata)
}

/// An entry's fields besides its two documents.
pub(crate) struct Fields<'a> {
    pub(crate) position: i64,
    pub(crate) event_id: i64,
    pub(crate) aggregate_type: &'a str,
    pub(crate) aggregate_id: &'a str,
    pub(crate) sequence: i64,
    pub(crate) event_type: &'a str,
    pub(crate) event_version: &'a str,
    pub(crate) recorded_at: DateTime<Utc>,
}

impl Fields<'_> {
    /// The canonical bytes of the entry of these fields and documents.
    pub(crate) fn canonical(&self, payload: &impl Canonical, metadata: &impl Canonical) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.aggregate_id.len() + payload.size_hint() + metadata.size_hint(),
        );
        out.push(b'{');
        field(&mut out, "aggregate_id", true);
        write_string(&mut out, self.aggregate_id);
        field(&mut out, "aggregate_type", false);
        write_string(&mut out, self.aggregate_type);
        field(&mut out, "event_id", false);
        let _ = write!(out, "{}", self.event_id);
        field(&mut out, "event_type", false);
        write_string(&mut out, self.event_type);
        field(&mut out, "event_version", false);
        write_string(&mut out, self.event_version);
        field(&mut out, "metadata", false);
        metadata.write_canonical(&mut out);
        field(&mut out, "payload", false);
        payload.write_canonical(&mut out);
        field(&mut out, "position", false);
        let _ = write!(out, "{}", self.position);
        field(&mut out, "recorded_at", false);
        write_string(
            &mut out,
            &self
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        field(&mut out, "sequence", false);
        let _ = write!(out, "{}", self.sequence);
        out.push(b'}');
        out
    }
}

/// A JSON document that can be written in canonical form.
pub(crate) trait Canonical {
    /// Appends the canonical form to `out`.
    fn write_canonical(&self, out: &mut Vec<u8>);

    /// About how many bytes the canonical form takes, when known beforehand.
    fn size_hint(&self) -> usize {
        128
    }
}

impl Canonical for Value {
    /// Writes the document with every object's keys sorted, whatever order
    /// the JSON library keeps them in.
    fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_canonical(out);
                }
                out.push(b']');
            }
            Value::Object(members) => {
                let mut keys: Vec<&String> = members.keys().collect();
                keys.sort_unstable();
                out.push(b'{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(out, key);
                    out.push(b':');
                    members[key].write_canonical(out);
                }
                out.push(b'}');
            }
            scalar => {
                // Null, booleans, numbers and strings: serde_json's own compact form.
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
}

/// A document as Postgres prints a `jsonb` value: valid JSON, object keys
/// unique, `", "` and `": "` between items, strings escaped exactly as
/// serde_json escapes them (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
/// control characters as `\u00xx`, nothing else).
pub(crate) struct JsonbText<'a>(pub(crate) &'a str);

impl Canonical for JsonbText<'_> {
    fn size_hint(&self) -> usize {
        self.0.len()
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let mut text = Text {
            bytes: self.0.as_bytes(),
            at: 0,
            depth: 0,
        };
        let rewritten = text.value(out).is_some() && {
            text.skip_whitespace();
            text.at == text.bytes.len()
        };
        if !rewritten {
            out.truncate(start);
            match serde_json::from_str::<Value>(self.0) {
                Ok(value) => value.write_canonical(out),
                // Not JSON at all: hashed as it stands, so it matches no
                // entry's hash rather than passing for another document.
                Err(_) => out.extend_from_slice(self.0.as_bytes()),
            }
        }
    }
}

/// The direct rewrite of a [`JsonbText`]. Each step returns `None` on anything
/// it is not sure to write as a [`Value`] would, and the caller then does.
struct Text<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Arrays and objects open around the value being read.
    depth: usize,
}

/// The deepest a document is rewritten directly: as deep as serde_json's
/// tree goes. Deeper, both refuse it, so a forged document nested thousands
/// deep costs no stack.
const MAX_DEPTH: usize = 127;

impl<'a> Text<'a> {
    fn skip_whitespace(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Option<()> {
        match self.peek()? {
            open @ (b'{' | b'[') => {
                if self.depth == MAX_DEPTH {
                    return None;
                }
                self.depth += 1;
                let written = if open == b'{' {
                    self.object(out)
                } else {
                    self.array(out)
                };
                self.depth -= 1;
                written
            }
            b'"' => {
                let string = self.string()?;
                out.extend_from_slice(&self.bytes[string]);
                Some(())
            }
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            _ => self.number(out),
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| {
            out.extend_from_slice(word);
            self.at = end;
        })
    }

    /// A string with its quotes, as it stands: its escapes are serde_json's.
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        self.at += 1;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(start..self.at);
                }
                b'\\' => {
                    let escape = self.bytes.get(self.at + 1..)?;
                    self.at += match escape.first()? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if is_control_escape(escape.get(1..5)?) => 6,
                        _ => return None,
                    };
                }
                byte if byte < 0x20 => return None,
                _ => self.at += 1,
            }
        }
    }

    /// A number serde_json writes back digit for digit (an integer of at most
    /// 18 digits, without a leading zero) as it stands; any other through
    /// serde_json's own number.
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.at += 1;
        }
        let token = &self.bytes[start..self.at];
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        let plain = !digits.is_empty()
            && digits.len() <= 18
            && digits.iter().all(u8::is_ascii_digit)
            && (digits[0] != b'0' || token == b"0");
        if plain {
            out.extend_from_slice(token);
        } else {
            let number: serde_json::Number = serde_json::from_slice(token).ok()?;
            serde_json::to_writer(&mut *out, &number).ok()?;
        }
        Some(())
    }

    fn array(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.expect(b'[')?;
        out.push(b'[');
        if self.peek()? == b']' {
            self.at += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.value(out)?;
            match self.peek()? {
                b',' => out.push(b','),
                b']' => break,
                _ => return None,
            }
            self.at += 1;
        }
        self.at += 1;
        out.push(b']');
        Some(())
    }

    /// An object with its members sorted by key: each member's value is
    /// written aside first, then all of them in order.
    fn object(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.expect(b'{')?;
        let mut values = Vec::new();
        let mut members: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        if self.peek()? != b'}' {
            loop {
                if self.peek()? != b'"' {
                    return None;
                }
                let key = self.string()?;
                // An escaped key sorts by the characters it stands for, which
                // its text does not show: the tree sorts those.
                if self.bytes[key.clone()].contains(&b'\\') {
                    return None;
                }
                self.expect(b':')?;
                let start = values.len();
                self.value(&mut values)?;
                members.push((key, start..values.len()));
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.at += 1;
        let unquoted = |key: &Range<usize>| &self.bytes[key.start + 1..key.end - 1];
        members.sort_unstable_by(|(a, _), (b, _)| unquoted(a).cmp(unquoted(b)));
        out.push(b'{');
        for (i, (key, value)) in members.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.bytes[key]);
            out.push(b':');
            out.extend_from_slice(&values[value]);
        }
        out.push(b'}');
        Some(())
    }
}

/// `00xx` after `\u`, lower-case hex below `0020`: how both Postgres and
/// serde_json write a control character without a short escape.
fn is_control_escape(hex: &[u8]) -> bool {
    matches!(hex, [b'0', b'0', b'0' | b'1', d] if d.is_ascii_digit() || (b'a'..=b'f').contains(d))
}

/// Starts a member of the canonical object.
fn field(out: &mut Vec<u8>, name: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    write_string(out, name);
    out.push(b':');
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn through_tree(text: &str) -> String {
        let mut out = Vec::new();
        serde_json::from_str::<Value>(text)
            .unwrap()
            .write_canonical(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn rewritten(text: &str) -> String {
        let mut out = Vec::new();
        JsonbText(text).write_canonical(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn jsonb_text_is_written_as_its_tree_would_be() {
        for text in [
            r#"{"b": 1, "a": {"d": [1, 2, {"y": null, "x": true}], "c": "é\n\"\\\u001f"}}"#,
            r#"{"ab!": 1, "ab": 2, "a": 3, "": 4}"#,
            r#"{"MessageSent": {"body": "hi", "sent_at": "2026-11-01T09:01:00Z"}}"#,
            r#"[]"#,
            r#"{}"#,
            r#"[{}, [], "", 0, -0, -7, 1.10, 1e3, 2E-2, 12345678901234567890123, 123456789012345678]"#,
            r#"{"k\"ey": 1, "a": 2}"#,
            r#"{"a": false, "b": [true, null]}"#,
            "  {\"a\":1}  ",
        ] {
            assert_eq!(rewritten(text), through_tree(text), "{text}");
        }
    }

    #[test]
    fn a_document_nested_deeper_than_the_tree_allows_is_hashed_as_it_stands() {
        for depth in [128, 100_000] {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(rewritten(&text), text);
        }
        let allowed = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert_eq!(rewritten(&allowed), through_tree(&allowed));
    }

    #[test]
    fn text_that_is_not_json_is_hashed_as_it_stands() {
        assert_eq!(rewritten("{\"a\": 1"), "{\"a\": 1");
        assert_eq!(rewritten("nope"), "nope");
    }
}
