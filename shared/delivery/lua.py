"""The Lua the job store's scripts run after each change, and the Redis names it uses.

``ON_CHANGE`` defines ``job_changed(job, previous, started, due, delivery)``; each job
script calls it once after it changed a job hash. It publishes the change on
``tgflow:job-events:{id}`` (``event``, ``seq``, ``status``, ``attempts``, ``progress``,
``error``) and, when the job reached a final state and carries a ``webhook_url``,
records the delivery in ``tgflow:webhook:{id}`` and makes it due now in
``tgflow:webhooks:due`` (the caller passes those two keys; without them it only
publishes). It needs the job scripts' ``snapshot`` function.
"""

from __future__ import annotations

JOB_EVENTS_PREFIX = "tgflow:job-events:"
WEBHOOK_PREFIX = "tgflow:webhook:"
WEBHOOK_DUE = "tgflow:webhooks:due"  # job id -> epoch ms when its next attempt is due
WEBHOOK_NUDGE = "tgflow:nudge:webhooks"


def job_events_channel(job_id: str) -> str:
    return JOB_EVENTS_PREFIX + job_id


def webhook_key(job_id: str) -> str:
    """A job's completion delivery (one per job: a job finishes once)."""
    return WEBHOOK_PREFIX + job_id


ON_CHANGE = (
    """
local function sets_status(argv, first)
  for i = first, #argv, 2 do
    if argv[i] == 'status' then return true end
  end
  return false
end

local function job_changed(job, previous, started, due, delivery)
  local f = redis.call('HMGET', job, 'id', 'status', 'seq', 'attempts', 'progress', 'error',
                       'webhook_url', 'tenant')
  local status = f[2]
  local event = 'progress'
  if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
    event = 'finished'
  elseif status == 'queued' then
    if previous == 'running' then event = 'retrying' else event = 'queued' end
  elseif started then
    event = 'started'
  end
  redis.call('PUBLISH', '"""
    + JOB_EVENTS_PREFIX
    + """' .. f[1], cjson.encode({
    event = event, seq = tonumber(f[3]), status = status, attempts = tonumber(f[4]),
    progress = f[5] or '', error = f[6] or ''}))
  if event == 'finished' and due and f[7] and f[7] ~= ''
     and redis.call('EXISTS', delivery) == 0 then
    local t = redis.call('TIME')
    local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', delivery, 'job_id', f[1], 'tenant', f[8], 'url', f[7],
               'job', snapshot(job), 'status', 'pending', 'attempts', '0',
               'created_at', now_us, 'next_attempt_at', now_us)
    redis.call('ZADD', due, string.sub(now_us, 1, -4), f[1])
    redis.call('PUBLISH', '"""
    + WEBHOOK_NUDGE
    + """', f[1])
  end
end
"""
)
