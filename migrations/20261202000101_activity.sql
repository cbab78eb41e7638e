-- The dashboard's time series (projection `activity`): counters per minute of
-- the events' `recorded_at`, summed into hours and days when read.

-- How many events of a kind (`BookingRequested`, `BookingCompleted`,
-- `BookingCancelled`, `MessageSent`) were recorded in each minute.
CREATE TABLE rm_activity_counts
(
    kind   text        NOT NULL,
    bucket timestamptz NOT NULL,
    count  bigint      NOT NULL CHECK (count > 0),
    PRIMARY KEY (kind, bucket)
);

-- Money taken and money returned per currency and minute; revenue is their
-- difference.
CREATE TABLE rm_activity_revenue
(
    currency        text        NOT NULL,
    bucket          timestamptz NOT NULL,
    succeeded_minor bigint      NOT NULL,
    refunded_minor  bigint      NOT NULL,
    PRIMARY KEY (currency, bucket)
);
CREATE INDEX rm_activity_revenue_bucket ON rm_activity_revenue (bucket);

-- Each payment's amount, so its success or refund knows how much it moves.
CREATE TABLE rm_activity_payments
(
    payment_id   uuid PRIMARY KEY,
    amount_minor bigint NOT NULL,
    currency     text   NOT NULL
);

-- When each chat last had a message, for the count of active chats.
CREATE TABLE rm_activity_chats
(
    chat_id         uuid PRIMARY KEY,
    last_message_at timestamptz NOT NULL
);
CREATE INDEX rm_activity_chats_last_message_at ON rm_activity_chats (last_message_at);
