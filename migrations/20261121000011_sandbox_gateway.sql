-- The built-in `sandbox` payment provider's own records. They play the part of
-- a real acquirer's database: Herald's event log never depends on them.

-- Charges the sandbox opened; `idempotence_key` makes a retried request answer
-- the charge it already opened instead of opening a second one.
CREATE TABLE sandbox_payments
(
    provider_payment_id text PRIMARY KEY,
    idempotence_key     text        NOT NULL UNIQUE,
    payment_id          uuid        NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency            text        NOT NULL,
    description         text        NOT NULL,
    -- pending, succeeded or canceled
    status              text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Refunds the sandbox made: only whole ones, so at most one per charge, and a
-- repeated request answers the refund already made.
CREATE TABLE sandbox_refunds
(
    provider_refund_id  text PRIMARY KEY,
    idempotence_key     text        NOT NULL,
    provider_payment_id text        NOT NULL UNIQUE REFERENCES sandbox_payments (provider_payment_id),
    created_at          timestamptz NOT NULL DEFAULT now()
);
