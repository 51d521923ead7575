-- Accounts not settled (half logged in, waiting to reconnect, in a flood wait) are read
-- every few seconds by each worker (recovery, expiry of abandoned logins): a small
-- partial index instead of a scan of every account. Account events are pruned by age.
CREATE INDEX accounts_unsettled ON accounts (updated_at)
    WHERE state IN ('login_pending', 'reconnecting', 'flood_wait');
CREATE INDEX account_events_created ON account_events (created_at);
