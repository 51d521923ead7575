-- The outcome of each job's completion webhook, written by the worker that settled it.
-- Redis holds pending deliveries; this table keeps delivered and failed ones for as long
-- as the job archive. No foreign key: the job's archive row may land a moment later.
CREATE TABLE webhook_deliveries (
    job_id            uuid PRIMARY KEY,
    tenant_id         text NOT NULL,
    delivery_id       uuid NOT NULL,
    url               text NOT NULL,
    status            text NOT NULL CHECK (status IN ('delivered', 'failed')),
    attempts          integer NOT NULL,
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL,
    last_attempt_at   timestamptz,
    delivered_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
