-- The monitor's state: alert episodes, silences and the notification log.

-- One row per alert episode: from the first evaluation that matched until it resolves.
-- A fingerprint (rule plus labels) has at most one unresolved episode at a time.
CREATE TABLE monitor_alerts (
    id               uuid PRIMARY KEY,
    fingerprint      text NOT NULL,
    rule             text NOT NULL,
    severity         text NOT NULL,
    state            text NOT NULL CHECK (state IN
                         ('pending', 'firing', 'nodata', 'error', 'resolved')),
    labels           jsonb NOT NULL,
    annotations      jsonb NOT NULL,
    value            double precision,
    active_at        timestamptz NOT NULL,
    fired_at         timestamptz,
    last_true_at     timestamptz NOT NULL,
    resolved_at      timestamptz,
    resolved_by      text,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    updated_at       timestamptz NOT NULL
);

CREATE UNIQUE INDEX monitor_alerts_open ON monitor_alerts (fingerprint)
    WHERE state <> 'resolved';
CREATE INDEX monitor_alerts_history ON monitor_alerts (active_at DESC, id DESC);
CREATE INDEX monitor_alerts_resolved ON monitor_alerts (resolved_at)
    WHERE state = 'resolved';

CREATE TABLE monitor_silences (
    id          uuid PRIMARY KEY,
    matchers    jsonb NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    created_by  text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CHECK (ends_at >= starts_at)
);

CREATE INDEX monitor_silences_ends ON monitor_silences (ends_at DESC);

-- The last successful notification per receiver and group: what it said was firing.
-- Deciding what to send from this table (not from memory) is what keeps a restart
-- from sending twice or forgetting to send.
CREATE TABLE monitor_nflog (
    receiver   text NOT NULL,
    group_key  text NOT NULL,
    firing     uuid[] NOT NULL,
    resolved   uuid[] NOT NULL,
    sent_at    timestamptz NOT NULL,
    PRIMARY KEY (receiver, group_key)
);

-- Every delivery attempt's outcome, for the API and for operators.
CREATE TABLE monitor_notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    receiver    text NOT NULL,
    group_key   text NOT NULL,
    status      text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('sent', 'failed')),
    attempts    integer NOT NULL,
    alerts      jsonb NOT NULL,
    error       text,
    created_at  timestamptz NOT NULL
);

CREATE INDEX monitor_notifications_created ON monitor_notifications (created_at DESC);
