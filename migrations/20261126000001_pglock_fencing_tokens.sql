-- Fencing tokens for pglock's optional fencing-token feature: one row per lock key.
--
-- Whoever acquires a key bumps its row's token (INSERT ... ON CONFLICT DO UPDATE SET
-- token = token + 1) in the same session that holds the advisory lock, and hands the new
-- value to the resources it writes to. A resource that has seen token N refuses writes
-- carrying a smaller one, so a holder that lost its lock without noticing (a paused
-- process, a cut network) cannot overwrite the work of the holder after it.
CREATE TABLE IF NOT EXISTS pglock_fencing_tokens (
    -- The LockKey's Display form: "-42" for a bigint key, "1,-2" for an int pair.
    lock_key   text        PRIMARY KEY,
    -- The last token handed out for this key; 0 before the first acquisition.
    token      bigint      NOT NULL DEFAULT 0 CHECK (token >= 0),
    -- When the token last changed.
    updated_at timestamptz NOT NULL DEFAULT now()
);
