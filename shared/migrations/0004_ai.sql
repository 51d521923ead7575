-- AI: the response cache and the usage ledger. Workers write; the gateway only reads.
CREATE TABLE ai_cache (
    key         text PRIMARY KEY,
    provider    text NOT NULL,
    model       text NOT NULL,
    answer      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE INDEX ai_cache_expires ON ai_cache (expires_at);

-- One row per answered attempt; a cached answer is a row with cached = true and no cost.
CREATE TABLE ai_usage (
    id                 bigserial PRIMARY KEY,
    tenant_id          text NOT NULL,
    job_id             uuid NOT NULL,
    attempt            integer NOT NULL,
    provider           text NOT NULL,
    model              text NOT NULL,
    prompt_tokens      integer NOT NULL,
    completion_tokens  integer NOT NULL,
    cost               numeric(20, 10) NOT NULL,
    cached             boolean NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, attempt)
);

CREATE INDEX ai_usage_tenant_created ON ai_usage (tenant_id, created_at);
