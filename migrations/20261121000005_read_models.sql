-- Read models: what GET endpoints answer from. Every row is a pure function of the
-- event log: values come from event fields, the entry's position or its
-- recorded_at, never from the clock or random sources, so rebuilding a projection
-- from the log gives the same rows as the live one. Each projection owns the
-- tables carrying its name and no other projection writes them.

-- ---------------------------------------------------------------- chats

CREATE TABLE rm_chats
(
    chat_id                uuid PRIMARY KEY,
    kind                   text        NOT NULL,
    title                  text,
    created_by             uuid        NOT NULL,
    created_at             timestamptz NOT NULL,
    -- the highest message seq seen, 0 before the first message
    last_seq               bigint      NOT NULL DEFAULT 0,
    -- {id, seq, author, body, sent_at} of the newest message not deleted
    last_message           jsonb,
    -- log position of the chat's creation or latest message: orders the chat list
    last_activity_position bigint      NOT NULL
);

CREATE TABLE rm_chat_members
(
    chat_id          uuid    NOT NULL,
    user_id          uuid    NOT NULL,
    read_up_to       bigint  NOT NULL DEFAULT 0,
    -- messages after read_up_to, not deleted, written by someone else
    unread_count     bigint  NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    -- log position of the event that brought the member in, then their place
    -- in that event's list: the order members joined in
    joined_position  bigint  NOT NULL,
    join_index       integer NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);

CREATE INDEX rm_chat_members_user_id ON rm_chat_members (user_id);

CREATE TABLE rm_chat_messages
(
    chat_id    uuid        NOT NULL,
    seq        bigint      NOT NULL CHECK (seq >= 1),
    message_id uuid        NOT NULL UNIQUE,
    author     uuid        NOT NULL,
    -- null once the message is deleted: a retracted text is not kept for readers
    body       text,
    sent_at    timestamptz NOT NULL,
    edited_at  timestamptz,
    deleted    boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (chat_id, seq)
);

-- ---------------------------------------------------------------- bookings

CREATE TABLE rm_bookings
(
    booking_id       uuid PRIMARY KEY,
    patient_id       uuid        NOT NULL,
    doctor_id        uuid,
    call_type        text        NOT NULL,
    address          text        NOT NULL,
    amount_minor     bigint      NOT NULL,
    currency         text        NOT NULL,
    scheduled_at     timestamptz,
    status           text        NOT NULL,
    paid             boolean     NOT NULL DEFAULT false,
    -- the payment that settled the booking, else the latest one started for it
    payment_id       uuid,
    payment_status   text,
    cancel_reason    text,
    requested_at     timestamptz NOT NULL,
    -- log position of BookingRequested: newest-first order and the paging cursor
    created_position bigint      NOT NULL UNIQUE,
    -- recorded_at of the latest event that changed the row
    updated_at       timestamptz NOT NULL
);

CREATE INDEX rm_bookings_patient ON rm_bookings (patient_id, created_position);
CREATE INDEX rm_bookings_doctor ON rm_bookings (doctor_id, created_position);
CREATE INDEX rm_bookings_status ON rm_bookings (status, created_position);

-- The bookings projection's own view of payments, so a booking row can show its
-- payment's status without reading another projection's tables.
CREATE TABLE rm_booking_payments
(
    payment_id uuid PRIMARY KEY,
    booking_id uuid NOT NULL,
    status     text NOT NULL
);

CREATE INDEX rm_booking_payments_booking_id ON rm_booking_payments (booking_id);

-- ---------------------------------------------------------------- payments

CREATE TABLE rm_payments
(
    payment_id          uuid PRIMARY KEY,
    booking_id          uuid        NOT NULL,
    patient_id          uuid        NOT NULL,
    method              text        NOT NULL,
    amount_minor        bigint      NOT NULL,
    currency            text        NOT NULL,
    status              text        NOT NULL,
    provider_payment_id text,
    provider_refund_id  text,
    -- the provider's page where the patient confirms, when the initiating
    -- event's metadata carries one
    confirmation_url    text,
    initiated_at        timestamptz NOT NULL,
    created_position    bigint      NOT NULL UNIQUE,
    updated_at          timestamptz NOT NULL
);

CREATE INDEX rm_payments_booking_id ON rm_payments (booking_id, created_position);

-- ---------------------------------------------------------------- summary

-- How many bookings and payments are in each status; kind is 'booking' or 'payment'.
CREATE TABLE rm_summary_counts
(
    kind   text   NOT NULL,
    status text   NOT NULL,
    count  bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (kind, status)
);

-- Money taken and money returned, per currency; revenue is their difference.
CREATE TABLE rm_summary_revenue
(
    currency        text PRIMARY KEY,
    succeeded_minor bigint NOT NULL DEFAULT 0,
    refunded_minor  bigint NOT NULL DEFAULT 0
);

-- Each aggregate's current status, so a transition knows which count to lower.
CREATE TABLE rm_summary_bookings
(
    booking_id uuid PRIMARY KEY,
    status     text NOT NULL
);

CREATE TABLE rm_summary_payments
(
    payment_id   uuid PRIMARY KEY,
    status       text   NOT NULL,
    amount_minor bigint NOT NULL,
    currency     text   NOT NULL
);
