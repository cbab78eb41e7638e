use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// What a read must wait for to see a command's effect: the aggregate and the
/// version the command left it at. Clients treat it as an opaque string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// The aggregate's type, as stored in the event log.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The aggregate's version (its last event's sequence) after the command.
    pub version: u64,
}

impl ConsistencyToken {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}/{}/{}",
            self.aggregate_type, self.aggregate_id, self.version
        ))
    }

    /// Reads a token back; `None` when it is not one Herald made.
    pub fn decode(token: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = raw.splitn(3, '/');
        let aggregate_type = parts.next()?.to_owned();
        let aggregate_id = parts.next()?.to_owned();
        let version = parts.next()?.parse().ok()?;
        Some(Self {
            aggregate_type,
            aggregate_id,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_what_was_encoded() {
        let token = ConsistencyToken {
            aggregate_type: "Chat".into(),
            aggregate_id: "0191e0c4-7c4b-7000-8000-000000000001".into(),
            version: 42,
        };
        assert_eq!(ConsistencyToken::decode(&token.encode()), Some(token));
    }

    #[test]
    fn text_herald_did_not_make_is_not_a_token() {
        assert_eq!(ConsistencyToken::decode("not a token"), None);
        assert_eq!(
            ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode("a/b/c")),
            None
        );
    }
}
