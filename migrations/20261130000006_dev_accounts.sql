-- `herald up --dev` gives its demo users accounts to sign in with: one
-- password, made up once and kept here so that it is printed the same after
-- every restart.
ALTER TABLE dev_identity ADD COLUMN password text;
