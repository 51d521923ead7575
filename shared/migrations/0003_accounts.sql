-- Telegram accounts, their encrypted sessions and their history of events.
CREATE TABLE accounts (
    id                  uuid PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    phone               text,
    tg_user_id          bigint,
    username            text,
    first_name          text,
    dc_id               integer,
    state               text NOT NULL CHECK (state IN
                            ('login_pending', 'active', 'flood_wait', 'reconnecting', 'disabled')),
    disabled_reason     text CHECK (disabled_reason IN
                            ('revoked', 'duplicated', 'deactivated', 'banned', 'invalid',
                             'logged_out')),
    flood_until         timestamptz,
    -- Envelope encryption: the session is sealed with a per-account data key, which is
    -- itself wrapped by the vault key named in session_key_id.
    session_ciphertext  bytea,
    session_wrapped_key bytea,
    session_key_id      text,
    last_error          text,
    invalid_since       timestamptz,
    last_used_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX accounts_tenant_user ON accounts (tenant_id, tg_user_id)
    WHERE tg_user_id IS NOT NULL;
CREATE INDEX accounts_tenant_created ON accounts (tenant_id, created_at DESC, id DESC);
CREATE INDEX accounts_key ON accounts (session_key_id) WHERE session_key_id IS NOT NULL;

CREATE TABLE account_events (
    id          bigserial PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX account_events_account ON account_events (account_id, created_at DESC);
CREATE INDEX account_events_kind ON account_events (kind, created_at DESC);

-- The MTProto random_id a send used, kept with the job for exactly-once resends.
ALTER TABLE jobs ADD COLUMN random_id bigint;
