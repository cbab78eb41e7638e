-- How far each projection has applied the log. Advanced in the same transaction
-- as the read-model rows it covers.
CREATE TABLE projection_checkpoints
(
    projection text PRIMARY KEY,
    position   bigint NOT NULL DEFAULT 0 CHECK (position >= 0)
);

-- Entries a projection could not apply after several attempts: skipped so the
-- projection goes on, kept here with the error until retried.
CREATE TABLE projection_dead_letters
(
    projection text        NOT NULL,
    position   bigint      NOT NULL,
    event_id   bigint      NOT NULL REFERENCES events (event_id),
    error      text        NOT NULL,
    attempts   integer     NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, position)
);
