//! Reading many log rows at once with `COPY (…) TO STDOUT (FORMAT binary)`.
//!
//! A query's rows each come as a driver row with its own buffer and typed,
//! checked columns; a binary `COPY` comes as one message of bytes per row,
//! which the readers of whole batches of the log (the verifier) walk field by
//! field without copying them. The format is Postgres's: a signature, flags
//! and a header extension (before the first row, in its message), then each
//! tuple as a field count and each field as its length (−1 for null) and its
//! binary value, then −1. The protocol sends every row in a message of its
//! own, so no tuple spans two.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::PgConnection;

/// What every binary `COPY` starts with.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to Postgres's, 2000-01-01.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Runs `COPY (query) TO STDOUT (FORMAT binary)` and returns its messages.
/// `query` is spliced into the statement as it is (the copy protocol takes no
/// parameters): it must hold no text from outside.
pub(crate) async fn copy_out(
    conn: &mut PgConnection,
    query: &str,
) -> Result<Vec<Bytes>, sqlx::Error> {
    conn.copy_out_raw(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
        .await?
        .try_collect()
        .await
}

/// The tuples of a binary `COPY`'s messages, each with `fields` fields.
pub(crate) struct Tuples<'a> {
    messages: std::slice::Iter<'a, Bytes>,
    /// What is left of the message being read.
    data: &'a [u8],
    fields: i16,
}

impl<'a> Tuples<'a> {
    /// The tuples after the header, which starts the first message.
    pub(crate) fn new(messages: &'a [Bytes], fields: i16) -> Result<Self, sqlx::Error> {
        let mut messages = messages.iter();
        let mut reader = Fields {
            data: messages.next().map_or(&[], |first| first.as_ref()),
        };
        if reader.take(SIGNATURE.len())? != SIGNATURE {
            return Err(malformed("no binary COPY signature"));
        }
        reader.take(4)?;
        let extension = u32::from_be_bytes(array(reader.take(4)?)?) as usize;
        reader.take(extension)?;
        Ok(Self {
            messages,
            data: reader.data,
            fields,
        })
    }

    /// The next tuple's fields, `None` after the last.
    pub(crate) fn next_tuple(&mut self) -> Result<Option<Fields<'a>>, sqlx::Error> {
        while self.data.is_empty() {
            match self.messages.next() {
                Some(message) => self.data = message,
                None => return Err(malformed("no end")),
            }
        }
        let mut reader = Fields { data: self.data };
        let count = i16::from_be_bytes(array(reader.take(2)?)?);
        if count == -1 {
            return Ok(None);
        }
        if count != self.fields {
            return Err(malformed("a tuple with another number of fields"));
        }
        // The tuple's fields are read from a copy of the reader, and the
        // tuples go on after them once they have been read.
        let tuple = Fields { data: reader.data };
        let mut skipped = Fields { data: reader.data };
        for _ in 0..count {
            skipped.field()?;
        }
        self.data = skipped.data;
        Ok(Some(tuple))
    }
}

/// The fields of one tuple, read in order.
pub(crate) struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], sqlx::Error> {
        if self.data.len() < len {
            return Err(malformed("cut short"));
        }
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        Ok(taken)
    }

    /// The next field's bytes, `None` for null.
    fn field(&mut self) -> Result<Option<&'a [u8]>, sqlx::Error> {
        let len = i32::from_be_bytes(array(self.take(4)?)?);
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }

    fn not_null(&mut self) -> Result<&'a [u8], sqlx::Error> {
        self.field()?
            .ok_or_else(|| malformed("null where a value was expected"))
    }

    /// A `bigint`.
    pub(crate) fn int8(&mut self) -> Result<i64, sqlx::Error> {
        Ok(i64::from_be_bytes(array(self.not_null()?)?))
    }

    /// A `text`.
    pub(crate) fn text(&mut self) -> Result<&'a str, sqlx::Error> {
        std::str::from_utf8(self.not_null()?).map_err(|_| malformed("text that is not UTF-8"))
    }

    /// A `bytea`, or null.
    pub(crate) fn bytea(&mut self) -> Result<Option<&'a [u8]>, sqlx::Error> {
        self.field()
    }

    /// A `timestamptz`.
    pub(crate) fn timestamptz(&mut self) -> Result<DateTime<Utc>, sqlx::Error> {
        let micros = i64::from_be_bytes(array(self.not_null()?)?);
        micros
            .checked_add(POSTGRES_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| malformed("a time out of range"))
    }
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], sqlx::Error> {
    bytes
        .try_into()
        .map_err(|_| malformed("a field of the wrong length"))
}

fn malformed(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("binary COPY data: {what}"))
}
