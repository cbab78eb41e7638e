-- What `herald up --dev` keeps so that its tokens survive a restart: the
-- secrets it made up for itself and its four demo users, one of each role.
-- Only development mode writes this row; a deployment configures its own
-- secrets and never reads it.
CREATE TABLE dev_identity (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    jwt_secret     text NOT NULL,
    webhook_secret text NOT NULL,
    patient_id     uuid NOT NULL,
    doctor_id      uuid NOT NULL,
    admin_id       uuid NOT NULL,
    auditor_id     uuid NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
