-- Notifications sent by e-mail. The e-mail worker reads the notifications
-- read model, never the log, so delivery can neither slow nor fail a command.

-- The outbox: one e-mail per notification and recipient, queued from
-- `rm_notifications` (a notification to an audience is queued once for each
-- member who wants it by e-mail). Its key is the notification's id, which a
-- rebuild of the read model gives again, so a notification queued twice is
-- still sent once. The address is looked up in `accounts` when the e-mail is
-- sent, so it is kept in one place only. A worker takes a due row with
-- `FOR UPDATE SKIP LOCKED`, holds the lock while it talks to the SMTP server
-- and marks the row sent in that transaction once the server has accepted the
-- message: a worker that dies first leaves the row unsent for a later
-- attempt, and two workers never take the same row. A failed attempt is
-- counted, its error kept and the row made due again after a longer pause;
-- after the last allowed attempt the row is set aside (`failed_at`) with its
-- last error, until someone makes it due again.
CREATE TABLE notification_emails
(
    notification_id uuid        NOT NULL,
    user_id         uuid        NOT NULL,
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
    PRIMARY KEY (notification_id, user_id),
    CHECK (sent_at IS NULL OR failed_at IS NULL)
);
CREATE INDEX notification_emails_due ON notification_emails (due_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX notification_emails_failed ON notification_emails (failed_at)
    WHERE failed_at IS NOT NULL;

-- How far the outbox has been filled: the newest `rm_notifications.position`
-- queued. One row, locked and moved in the transaction that queues the rows
-- after it. The worker writes it on its first start at the newest position
-- there is then, so notifications from before e-mail was configured are not
-- sent.
CREATE TABLE notification_email_cursor
(
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint  NOT NULL CHECK (position >= 0)
);
