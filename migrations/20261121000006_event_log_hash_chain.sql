-- Tamper evidence: every sequenced entry is linked into two SHA-256 hash chains.
--
--   hash            chains the whole log in position order:
--                   hash(n) = sha256(hash(n - 1) || canonical bytes of entry n),
--                   with 32 zero bytes before position 1;
--   aggregate_hash  chains one aggregate's events in sequence order:
--                   aggregate_hash(k) = sha256(aggregate_hash(k - 1) || canonical bytes),
--                   with 32 zero bytes before sequence 1.
--
-- README's "Audit" section defines the canonical bytes. The relay, the log's
-- single sequencer, computes both in the transaction that numbers the entries.
-- Entries numbered before this migration are hashed by the relay when it next
-- becomes active, oldest first, before it numbers anything new: `hashed_position`
-- is how far it has hashed, so it never hashes a position twice.
ALTER TABLE event_log
    ADD COLUMN hash           bytea CHECK (octet_length(hash) = 32),
    ADD COLUMN aggregate_hash bytea CHECK (octet_length(aggregate_hash) = 32);

ALTER TABLE relay_cursor
    ADD COLUMN hashed_position bigint NOT NULL DEFAULT 0;
