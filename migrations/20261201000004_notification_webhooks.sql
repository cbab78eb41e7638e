-- Where integrators (a push gateway, an SMS provider) want notifications
-- posted: one URL per notification kind, registered by an admin. Like
-- sessions, this is configuration beside the log, not part of it: the secret
-- each delivery is signed with must never reach the log. How the last attempt
-- went is kept here for admins to see; the deliveries themselves are in
-- `notification_deliveries`.
CREATE TABLE notification_webhooks
(
    id              uuid PRIMARY KEY,
    kind            text        NOT NULL,
    url             text        NOT NULL,
    secret          text        NOT NULL,
    created_by      uuid        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    -- The HTTP status of the last attempt; null when it got no answer.
    last_status     integer,
    last_error      text
);
CREATE INDEX notification_webhooks_kind ON notification_webhooks (kind);
