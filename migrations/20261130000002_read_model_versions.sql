-- What a read's ETag is made of: the log position of the latest entry that
-- changed a row (for a chat, of any entry of the chat, its messages and
-- members included). A client polling a booking, a payment or a chat learns
-- from this one column, read with the row's ownership, that nothing changed.
-- Rows written before this column existed keep 0 until they next change or
-- their read model is replayed; their tag is then stable, as it should be.
ALTER TABLE rm_chats    ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE rm_bookings ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE rm_payments ADD COLUMN version bigint NOT NULL DEFAULT 0;
