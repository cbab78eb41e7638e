-- The publisher's progress, apart from the sequencer's cursor. Both shared the
-- relay_cursor row, so the sequencer locked it for each of its transactions
-- and the publisher's update waited behind every one of them. Informational:
-- after any error the publisher resumes from the stream's last message.
CREATE TABLE relay_published
(
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- the last position JetStream acknowledged
    position  bigint  NOT NULL DEFAULT 0
);

INSERT INTO relay_published (position)
SELECT published_position FROM relay_cursor;

ALTER TABLE relay_cursor DROP COLUMN published_position;
