-- Interactive login: what a pending login needs between its steps.
ALTER TABLE accounts ADD COLUMN login_code_hash text;
ALTER TABLE accounts ADD COLUMN login_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN login_needs_password boolean NOT NULL DEFAULT false;
