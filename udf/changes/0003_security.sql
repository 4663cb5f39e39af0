-- Run-once schema changes for the trust boundary (see docs/security.md): every task, job, model and
-- error records the role it belongs to, and row-level security shows a role only its own. Users
-- change ml tables only through functions (udf/security.sql holds the SECURITY DEFINER helpers);
-- the table grants themselves are in udf/privileges.sql.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_admin') THEN
        BEGIN
            CREATE ROLE pgsight_admin NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgsight: cannot create role pgsight_admin (no CREATEROLE)';
        END;
    END IF;
END $$;

-- Jobs are no longer inserted by the caller's own function (ml._job_submit is the one way in).
DROP FUNCTION IF EXISTS ml._submit_job(text, text, jsonb, boolean);

-- The owner of existing rows: the owner of the task's table; models registered before this
-- revision have none (only pgsight_admin may replace or drop them).
ALTER TABLE ml.models ADD COLUMN owner name;
ALTER TABLE ml.tasks  ADD COLUMN owner name;
ALTER TABLE ml.jobs   ADD COLUMN owner name;
ALTER TABLE ml.errors ADD COLUMN owner name;
UPDATE ml.tasks t SET owner = (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                               WHERE c.oid = t.table_name);
UPDATE ml.jobs j SET owner = (SELECT t.owner FROM ml.tasks t WHERE t.id = j.task_id);
UPDATE ml.errors e SET owner = coalesce((SELECT j.owner FROM ml.jobs j WHERE j.id = e.job_id),
                                        (SELECT t.owner FROM ml.tasks t WHERE t.id = e.task_id));
CREATE INDEX jobs_owner_idx ON ml.jobs (owner);

-- Per-row errors are written by workers: they belong to the job's (or the task's) owner.
CREATE OR REPLACE FUNCTION ml._error_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, ml AS $$
BEGIN
    NEW.owner := coalesce(NEW.owner, (SELECT j.owner FROM ml.jobs j WHERE j.id = NEW.job_id),
                          (SELECT t.owner FROM ml.tasks t WHERE t.id = NEW.task_id));
    RETURN NEW;
END $$;
CREATE TRIGGER pgsight_error_owner BEFORE INSERT ON ml.errors FOR EACH ROW EXECUTE FUNCTION ml._error_owner();

-- Row-level security: a user sees its own tasks, jobs, errors and queue rows; workers and
-- pgsight_admin see all; the loopback role reads job status (ml.wait). Table owners and superusers
-- bypass it as usual. Writes by users have no policy: they have no write privileges either.
ALTER TABLE ml.tasks  ENABLE ROW LEVEL SECURITY;
ALTER TABLE ml.jobs   ENABLE ROW LEVEL SECURITY;
ALTER TABLE ml.errors ENABLE ROW LEVEL SECURITY;
ALTER TABLE ml.queue  ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    tbl text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_user') THEN
        RETURN;  -- no least-privilege roles (no CREATEROLE): only owners and superusers use ml
    END IF;
    FOREACH tbl IN ARRAY ARRAY['tasks', 'jobs', 'errors'] LOOP
        EXECUTE format('CREATE POLICY pgsight_own ON ml.%I FOR SELECT TO pgsight_user USING (owner = current_user)', tbl);
    END LOOP;
    CREATE POLICY pgsight_own ON ml.queue FOR SELECT TO pgsight_user
        USING (EXISTS (SELECT 1 FROM ml.tasks t WHERE t.id = queue.task_id));
    FOREACH tbl IN ARRAY ARRAY['tasks', 'jobs', 'errors', 'queue'] LOOP
        EXECUTE format('CREATE POLICY pgsight_worker ON ml.%I TO pgsight_worker USING (true) WITH CHECK (true)', tbl);
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_admin') THEN
            EXECUTE format('CREATE POLICY pgsight_admin ON ml.%I FOR SELECT TO pgsight_admin USING (true)', tbl);
        END IF;
    END LOOP;
    CREATE POLICY pgsight_loopback ON ml.jobs FOR SELECT TO pgsight_loopback USING (true);
END $$;

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
