-- The notifications read model, kept by the `notifications` projection from
-- the log alone, so a rebuild gives the same feed.

-- What happened that someone should hear of: a row per recipient, or one row
-- for everyone in an audience (a new booking waiting for a doctor), which the
-- reads show to the roles configured for it. `position` is the log position
-- of the event it tells of; a recipient has at most one notification there.
CREATE TABLE rm_notifications
(
    id         uuid PRIMARY KEY,
    position   bigint      NOT NULL,
    user_id    uuid,
    kind       text        NOT NULL,
    booking_id uuid,
    payment_id uuid,
    chat_id    uuid,
    -- How many messages a chat notification gathers.
    messages   bigint,
    -- Whether its recipient wanted it by e-mail when it happened.
    email      boolean     NOT NULL,
    -- A notification to an audience counts them: 1, 2, 3, … with no gaps,
    -- so how many someone has not read is one subtraction.
    broadcast  bigint,
    created_at timestamptz NOT NULL,
    CHECK ((user_id IS NULL) = (broadcast IS NOT NULL))
);
CREATE UNIQUE INDEX rm_notifications_feed ON rm_notifications (user_id, position);
CREATE UNIQUE INDEX rm_notifications_broadcasts ON rm_notifications (position, broadcast)
    WHERE user_id IS NULL;
CREATE INDEX rm_notifications_position ON rm_notifications (position);

-- What the projection knows of each person: their role while active, where
-- in the log they took it (they hear of no earlier audience notification),
-- how far they have read, and their notification settings as the log has them
-- (the domain's `NotificationSettings`).
CREATE TABLE rm_notification_people
(
    user_id    uuid PRIMARY KEY,
    role       text    NOT NULL,
    active     boolean NOT NULL,
    joined_at  bigint  NOT NULL,
    read_up_to bigint  NOT NULL,
    settings   jsonb   NOT NULL
);

-- Who a booking concerns, and whose a payment is.
CREATE TABLE rm_notification_bookings
(
    booking_id uuid PRIMARY KEY,
    patient_id uuid NOT NULL,
    doctor_id  uuid
);
CREATE TABLE rm_notification_payments
(
    payment_id uuid PRIMARY KEY,
    patient_id uuid NOT NULL
);

-- Chats with messages that may have to be reminded of, filled by the
-- `chat-reminders` follower of the log in the transaction that moves its
-- checkpoint: `due_at` is when the chat is next looked at (when its oldest
-- message not yet covered has waited long enough, or when a process that
-- took it may be presumed gone), `through_seq` the newest message seen,
-- `latest_due_at` when that one has waited long enough. A reminder covers the
-- messages up to the newest one that has waited long enough and removes the
-- row, unless newer messages came: then the row waits for the newest.
CREATE TABLE chat_reminders
(
    chat_id       uuid PRIMARY KEY,
    due_at        timestamptz NOT NULL,
    through_seq   bigint      NOT NULL,
    latest_due_at timestamptz NOT NULL
);
CREATE INDEX chat_reminders_due ON chat_reminders (due_at);
