-- Idempotency keys: which command a caller's `Idempotency-Key` produced.
--
-- A row is written by the trigger below in the same transaction as the command's
-- events, so a key is recorded if and only if its events are. A second transaction
-- that carries the same key (a retry racing the first request) fails with a unique
-- violation, is rolled back whole, and the caller then finds the first one's row.
CREATE TABLE idempotency_keys
(
    actor          uuid        NOT NULL,
    key            text        NOT NULL,
    request_hash   text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    first_sequence bigint      NOT NULL,
    last_sequence  bigint      NOT NULL,
    xid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);

CREATE FUNCTION record_idempotency_key() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    claimed bigint;
BEGIN
    INSERT INTO idempotency_keys AS k (actor, key, request_hash, aggregate_type, aggregate_id,
                                       first_sequence, last_sequence)
    VALUES ((NEW.metadata ->> 'actor')::uuid, NEW.metadata ->> 'idempotency_key',
            NEW.metadata ->> 'request_hash', NEW.aggregate_type, NEW.aggregate_id,
            NEW.sequence, NEW.sequence)
    ON CONFLICT (actor, key) DO UPDATE
        SET last_sequence = greatest(k.last_sequence, EXCLUDED.last_sequence)
        WHERE k.xid = pg_current_xact_id()
          AND k.aggregate_type = EXCLUDED.aggregate_type
          AND k.aggregate_id = EXCLUDED.aggregate_id;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed = 0 THEN
        RAISE EXCEPTION 'idempotency key already used'
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'idempotency_keys_pkey';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_record_idempotency_key
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.metadata ? 'idempotency_key')
    EXECUTE FUNCTION record_idempotency_key();
