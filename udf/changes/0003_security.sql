-- Run-once schema changes for the trust boundary (ownership, row-level security). Placeholder
-- until that work lands: a revision with nothing to change.
SELECT 1;

-- Query-time requests (ml.rpc): each records its owner, the hash of a token only the caller knows
-- (the reply is read by presenting the token) and the advisory-lock key the caller holds while it
-- waits (the worker drops requests nobody waits for). ml.loopback keeps the server secret that signs
-- a caller's ticket, so that the loopback session can only submit for the caller's own role.
ALTER TABLE ml.rpc ADD COLUMN IF NOT EXISTS owner name NOT NULL DEFAULT current_user;
ALTER TABLE ml.rpc ADD COLUMN IF NOT EXISTS token_hash bytea;
ALTER TABLE ml.rpc ADD COLUMN IF NOT EXISTS waiter bigint;
CREATE INDEX IF NOT EXISTS rpc_waiter_idx ON ml.rpc (waiter);
ALTER TABLE ml.loopback ADD COLUMN IF NOT EXISTS secret bytea NOT NULL
    DEFAULT sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'));
DROP PROCEDURE IF EXISTS ml._rpc_call(text, text, jsonb, bytea, interval, text, text, text, text);
