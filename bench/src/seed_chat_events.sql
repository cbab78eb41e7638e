-- One chat's events, given as parallel arrays (one element an event), in the
-- columns postgres-es writes; Postgres fills in event_id, xid and recorded_at
-- and the message-id trigger claims every message's id, as for any event.
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, sequence, event_type, event_version, payload, metadata
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
       AS e(sequence, event_type, event_version, payload, metadata)
