//! Many rows at once with binary `COPY`: reading the log with `COPY (…) TO
//! STDOUT (FORMAT binary)`, and writing whole tables with `COPY … FROM STDIN
//! (FORMAT binary)`.
//!
//! A query's rows each come as a driver row with its own buffer and typed,
//! checked columns; a binary `COPY` comes as one message of bytes per row,
//! which the readers of whole batches of the log (the verifier, the rebuilds)
//! walk field by field without copying them. Rows written this way ([`Rows`])
//! are parsed by Postgres without a statement or a text conversion per row.
//! The format is Postgres's: a signature, flags and a header extension
//! (before the first row, in its message), then each tuple as a field count
//! and each field as its length (−1 for null) and its binary value, then −1.
//! The protocol sends every row in a message of its own, so no tuple spans
//! two.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::PgConnection;

/// What every binary `COPY` starts with.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// The version byte before a `jsonb`'s text.
const JSONB_VERSION: u8 = 1;
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

/// Rows for a `COPY … FROM STDIN (FORMAT binary)`, written field by field in
/// the table's column order. [`Rows::take`] hands over what is written so far,
/// so a long `COPY` is sent in pieces; [`Rows::finish`] ends it.
#[derive(Debug)]
pub struct Rows {
    data: Vec<u8>,
}

impl Default for Rows {
    fn default() -> Self {
        Self::new()
    }
}

impl Rows {
    /// An empty `COPY`, its header written.
    pub fn new() -> Self {
        let mut data = Vec::with_capacity(1 << 16);
        data.extend_from_slice(SIGNATURE);
        // No flags, no header extension.
        data.extend_from_slice(&[0; 8]);
        Self { data }
    }

    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.data.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn value(&mut self, bytes: &[u8]) -> &mut Self {
        // Every value written here is far below 2 GiB, the most a field holds.
        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.data.extend_from_slice(&len.to_be_bytes());
        self.data.extend_from_slice(bytes);
        self
    }

    /// A null.
    pub fn null(&mut self) -> &mut Self {
        self.data.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    /// A `bigint`.
    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.value(&value.to_be_bytes())
    }

    /// An `integer`.
    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.value(&value.to_be_bytes())
    }

    /// A `boolean`.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.value(&[u8::from(value)])
    }

    /// A `uuid`, given as its sixteen bytes.
    pub fn uuid(&mut self, bytes: &[u8; 16]) -> &mut Self {
        self.value(bytes)
    }

    /// A `text`, or null.
    pub fn text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(text) => self.value(text.as_bytes()),
            None => self.null(),
        }
    }

    /// A `jsonb` given as JSON text, or null.
    pub fn jsonb(&mut self, value: Option<&str>) -> &mut Self {
        let Some(json) = value else {
            return self.null();
        };
        let len = i32::try_from(json.len() + 1).unwrap_or(i32::MAX);
        self.data.extend_from_slice(&len.to_be_bytes());
        self.data.push(JSONB_VERSION);
        self.data.extend_from_slice(json.as_bytes());
        self
    }

    /// A `timestamptz`, or null. Postgres keeps microseconds; finer parts are
    /// dropped toward its epoch, as sqlx drops them when a time is bound to a
    /// statement, so a row copied and a row inserted hold the same time.
    pub fn timestamptz(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        let Some(at) = value else {
            return self.null();
        };
        let epoch = DateTime::from_timestamp_micros(POSTGRES_EPOCH_MICROS).unwrap_or_default();
        // Never out of range: chrono's times span ±262 000 years, an i64 of
        // microseconds ±292 000.
        let micros = (at - epoch).num_microseconds().unwrap_or(i64::MAX);
        self.int8(micros)
    }

    /// The bytes written since the last call, to be sent; the `COPY` goes on.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }

    /// The last bytes to send, the end of the `COPY` among them.
    pub fn finish(mut self) -> Vec<u8> {
        self.data.extend_from_slice(&(-1i16).to_be_bytes());
        self.data
    }

    /// Copies the rows in with `statement`, a `COPY … FROM STDIN (FORMAT
    /// binary)`, in one go.
    pub async fn copy_into(
        self,
        conn: &mut PgConnection,
        statement: &str,
    ) -> Result<u64, sqlx::Error> {
        let mut copy = conn.copy_in_raw(statement).await?;
        copy.send(self.finish()).await?;
        copy.finish().await
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
