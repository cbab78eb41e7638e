-- Accounts: how a person signs in and is reached.
--
-- The log records that a user exists and in which role (`UserRegistered`);
-- the personal data is kept here instead, written in the same statement and
-- transaction as that event, so that it can be erased later without touching
-- the log. The password is kept only as its argon2id hash.
CREATE TABLE accounts
(
    user_id       uuid        PRIMARY KEY,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    name          text        NOT NULL,
    phone         text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One account per e-mail address, whatever its case. The write side reads a
-- clash with it as the rule it keeps, not as a race to retry.
CREATE UNIQUE INDEX one_account_per_email ON accounts (lower(email));
