-- Dead letters: each failed run's error, when a job was dead-lettered, how often it was
-- requeued, and the job's own timeout and priority (so a requeue can rebuild it from the
-- archive).
ALTER TABLE jobs
    ADD COLUMN history jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN dead_at timestamptz,
    ADD COLUMN requeued integer NOT NULL DEFAULT 0,
    ADD COLUMN timeout double precision,
    ADD COLUMN priority text NOT NULL DEFAULT 'normal';

-- A tenant's dead letters, newest first; a requeue clears dead_at and leaves the index.
CREATE INDEX jobs_dead_letters ON jobs (tenant_id, dead_at DESC, id DESC)
    WHERE dead_at IS NOT NULL;
