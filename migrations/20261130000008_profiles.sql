-- A doctor's specialty and short introduction, shown to patients; personal
-- data like the rest of the account, so kept here and not in the log.
ALTER TABLE accounts
    ADD COLUMN specialty text,
    ADD COLUMN bio       text;

-- Reads show people's names beside their ids, so an answer's ETag must
-- change when a name does. `version` grows with every statement that opens
-- an account or changes a name; it is one row, so the writers take turns on
-- it and each sees the one before it committed: a reader that sees a
-- version sees every name written up to it.
CREATE TABLE account_names
(
    version bigint NOT NULL
);
INSERT INTO account_names (version) VALUES (0);

CREATE FUNCTION count_account_names() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    UPDATE account_names SET version = version + 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER accounts_count_names
    AFTER INSERT OR UPDATE OF name ON accounts
    FOR EACH STATEMENT
    EXECUTE FUNCTION count_account_names();
