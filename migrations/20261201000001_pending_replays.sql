-- The read models a `herald replay` was asked to rebuild and has not swapped in
-- yet. A replay's swap deletes its row in the same transaction, so the rows an
-- interrupted run leaves are exactly what `herald replay --resume` rebuilds.
CREATE TABLE pending_replays
(
    projection   text PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
