-- Tenants and the job archive. Workers write; the gateway only reads.
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    type             text NOT NULL,
    queue            text NOT NULL,
    status           text NOT NULL CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params           jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    result           jsonb,
    error_code       text,
    error_message    text,
    idempotency_key  text,
    trace_id         text,
    seq              bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    run_at           timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Newest-first listing per tenant, optionally filtered.
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_status_created ON jobs (tenant_id, status, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_type_created ON jobs (tenant_id, type, created_at DESC, id DESC);
CREATE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
