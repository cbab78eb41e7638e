-- Notifications delivered outside Herald: by e-mail, and to the webhooks
-- admins register. Deliveries are made from the notifications read model,
-- never from the log, so they can neither slow nor fail a command.

-- The outbox: one delivery per notification, channel and target (the
-- recipient for an e-mail, the webhook for a webhook), queued from
-- `rm_notifications` (a notification to an audience is e-mailed once to each
-- member who wants it so). A worker takes a due row with `FOR UPDATE SKIP
-- LOCKED`, holds the lock while it delivers and marks the row sent in that
-- transaction once the receiver has accepted it: a worker that dies first
-- leaves the row for a later attempt, and two workers never take the same
-- row. A failed attempt is counted, its error kept and the row made due
-- again after a longer pause; after the last allowed attempt the row is set
-- aside (`failed_at`) with its last error, until someone makes it due again.
CREATE TABLE notification_deliveries
(
    notification_id uuid        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          uuid        NOT NULL,
    kind            text        NOT NULL,
    -- The log position of what the notification tells of.
    position        bigint      NOT NULL,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    -- When the next attempt may be made.
    due_at          timestamptz NOT NULL DEFAULT now(),
    -- Attempts that ended, in success or failure; one cut short by a crash
    -- is not counted.
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    sent_at         timestamptz,
    failed_at       timestamptz,
    PRIMARY KEY (notification_id, channel, target),
    CHECK (sent_at IS NULL OR failed_at IS NULL)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (channel, due_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX notification_deliveries_target ON notification_deliveries (channel, target);

-- How far each channel's outbox has been filled: the newest
-- `rm_notifications.position` queued. A row per channel, locked and moved in
-- the transaction that queues the deliveries after it. A channel's worker
-- writes it on its first start at the newest position there is then, so
-- notifications from before the channel was set up are not delivered.
CREATE TABLE notification_delivery_cursors
(
    channel  text PRIMARY KEY CHECK (channel IN ('email', 'webhook')),
    position bigint NOT NULL CHECK (position >= 0)
);
