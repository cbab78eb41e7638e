-- The sequenced log: the relay gives every committed event a dense position in
-- commit order. `position` is what clients, auditors, consistency tokens and
-- projections use; it has no gaps and only grows.
CREATE TABLE event_log
(
    position bigint PRIMARY KEY CHECK (position >= 1),
    event_id bigint NOT NULL UNIQUE REFERENCES events (event_id)
);

-- The relay's progress. It reads events in (xid, event_id) order, only below the
-- transaction-id horizon (every transaction older than the oldest one still
-- running has ended), so no event can appear behind its cursor later.
CREATE TABLE relay_cursor
(
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- the last event sequenced: (xid, event_id) and the position it got
    sequenced_xid      xid8    NOT NULL DEFAULT '0',
    sequenced_event_id bigint  NOT NULL DEFAULT 0,
    sequenced_position bigint  NOT NULL DEFAULT 0,
    -- the last position JetStream acknowledged
    published_position bigint  NOT NULL DEFAULT 0
);

INSERT INTO relay_cursor DEFAULT VALUES;
