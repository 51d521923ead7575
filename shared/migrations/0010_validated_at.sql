-- When a worker last validated an account's session (or found it connected, which is
-- proof enough): validation walks accounts by this, so that every one gets its turn.
ALTER TABLE accounts ADD COLUMN validated_at timestamptz;
CREATE INDEX accounts_validation ON accounts (validated_at NULLS FIRST, id)
    WHERE session_ciphertext IS NOT NULL
      AND state IN ('active', 'flood_wait', 'reconnecting');
