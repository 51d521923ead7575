-- Failure rates over recent jobs (the monitor) read the archive by finish time.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
