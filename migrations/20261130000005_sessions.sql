-- Sessions: the refresh tokens of signed-in users, kept only as SHA-256
-- hashes. Each sign-in starts a family; refreshing rotates the token within
-- it. A token presented again after it was rotated was stolen or leaked:
-- its whole family is revoked.
CREATE TABLE refresh_tokens
(
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    family     uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- when its successor was issued
    rotated_at timestamptz,
    -- when its family was revoked (signed out, reused, password changed)
    revoked_at timestamptz
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
