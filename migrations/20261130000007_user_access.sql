-- Who may act: each user's role, whether they may sign in, and the moment
-- before which their tokens are refused (set when their role changes or they
-- are deactivated). A trigger fills it from each User event in the
-- transaction that stores the event, so every Herald process's token check
-- and the write side read the log's answer without a read model. A change of
-- role or access is announced on the channel `herald_user_access` at commit,
-- so that every process refuses the user's old tokens at once.
CREATE TABLE user_access
(
    user_id    uuid        PRIMARY KEY,
    role       text        NOT NULL,
    active     boolean     NOT NULL DEFAULT true,
    not_before timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE FUNCTION record_user_access() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    body jsonb := NEW.payload -> NEW.event_type;
    id   uuid  := NEW.aggregate_id::uuid;
BEGIN
    CASE NEW.event_type
        WHEN 'UserRegistered', 'UserCreated' THEN
            INSERT INTO user_access (user_id, role) VALUES (id, body ->> 'role');
        WHEN 'RoleChanged' THEN
            UPDATE user_access SET role = body ->> 'to', not_before = now() WHERE user_id = id;
            PERFORM pg_notify('herald_user_access', '');
        WHEN 'UserDeactivated' THEN
            UPDATE user_access SET active = false, not_before = now() WHERE user_id = id;
            -- Their sessions end with the deactivation.
            UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = id AND revoked_at IS NULL;
            PERFORM pg_notify('herald_user_access', '');
        WHEN 'UserReactivated' THEN
            UPDATE user_access SET active = true WHERE user_id = id;
            PERFORM pg_notify('herald_user_access', '');
        ELSE
            NULL;
    END CASE;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_record_user_access
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'User')
    EXECUTE FUNCTION record_user_access();

-- One-time tokens for setting a password on an account an admin opened,
-- kept only as SHA-256 hashes.
CREATE TABLE password_setups
(
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id    uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
