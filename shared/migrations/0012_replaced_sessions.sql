-- Sessions an account no longer holds, because a new login or import of its user gave it
-- a session of another auth key. Each is kept sealed (as it was in accounts, the account
-- id bound in) until the worker owning the account's shard has dropped its client of the
-- old key and logged the key out at Telegram; meanwhile no import may adopt that key.
CREATE TABLE replaced_sessions (
    id                  bigserial PRIMARY KEY,
    account_id          uuid NOT NULL,
    tenant_id           text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    auth_key_hash       text,
    session_ciphertext  bytea NOT NULL,
    session_wrapped_key bytea NOT NULL,
    session_key_id      text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replaced_sessions_account ON replaced_sessions (account_id);
CREATE INDEX replaced_sessions_key ON replaced_sessions (auth_key_hash)
    WHERE auth_key_hash IS NOT NULL;
