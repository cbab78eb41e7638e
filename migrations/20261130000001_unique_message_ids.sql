-- Message ids are chosen by clients, and one id names one message in all of
-- Herald: reads, receipts and deletions address a message by it alone. A chat
-- refuses an id it has seen itself; this lookup table, which the write side
-- keeps, refuses one that any other chat has used, in the transaction that
-- stores the MessageSent, whichever process stores it.
CREATE TABLE message_ids
(
    message_id uuid PRIMARY KEY,
    chat_id    text NOT NULL
);

CREATE FUNCTION claim_message_id() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    id uuid := (NEW.payload -> 'MessageSent' ->> 'message_id')::uuid;
BEGIN
    -- Every MessageSent Herald writes names its message; a row that names
    -- none claims nothing.
    IF id IS NOT NULL THEN
        INSERT INTO message_ids (message_id, chat_id) VALUES (id, NEW.aggregate_id);
    END IF;
    RETURN NEW;
EXCEPTION
    WHEN unique_violation THEN
        -- Not a unique violation: the event store reads those as a version
        -- clash and retries, which can never succeed here.
        RAISE EXCEPTION 'a message with this id already exists'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'one_message_per_id';
END;
$$;

CREATE TRIGGER events_claim_message_id
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Chat' AND NEW.event_type = 'MessageSent')
    EXECUTE FUNCTION claim_message_id();

-- Messages stored before this rule: the first use of an id keeps it.
INSERT INTO message_ids (message_id, chat_id)
SELECT (payload -> 'MessageSent' ->> 'message_id')::uuid, aggregate_id
  FROM events
 WHERE aggregate_type = 'Chat' AND event_type = 'MessageSent'
   AND payload -> 'MessageSent' ->> 'message_id' IS NOT NULL
 ORDER BY event_id
    ON CONFLICT (message_id) DO NOTHING;
