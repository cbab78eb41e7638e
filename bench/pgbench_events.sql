-- One chat message's worth of event, inserted in its own transaction into
-- Herald's own `events` table (identity, xid default, keys, index, append-only
-- triggers and the message-id lookup included): the machine's limit for
-- Herald's write.
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ('Chat', gen_random_uuid()::text, 1, 'MessageSent', '1',
        jsonb_build_object('MessageSent', jsonb_build_object(
            'seq', 1, 'body', 'How are you feeling today? Note 1.',
            'author', '8899953a-2ca5-4b7a-b5e5-e7b17eb4d265',
            'sent_at', '2026-11-21T13:56:17.472616809Z', 'message_id', gen_random_uuid())),
        '{"role": "doctor", "actor": "8899953a-2ca5-4b7a-b5e5-e7b17eb4d265", "causation_id": "01a1fe64-bdc0-7360-9538-96f1eda2aec1", "correlation_id": "01a1fe64-bdc0-7360-9538-96f1eda2aec1"}');
