-- Roles and privileges for a least-privilege setup (applied last, idempotent).
--   pgsight_user     group role for people and applications that call ml.* on their own tables
--   pgsight_worker   group role for the worker's login role: the ml queue, and exactly the columns
--                    of user tables that pgsight columns read and write (granted per column)
--   pgsight_loopback the role the loopback connection may log in as (query-time requests, job
--                    status); NOLOGIN until an administrator configures it (see README)
-- Superusers and table owners keep working as before; PUBLIC gets nothing in schema ml.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgsight_user', 'pgsight_worker', 'pgsight_loopback'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'pgsight: cannot create role % (no CREATEROLE); least-privilege roles skipped', r;
                RETURN;
            END;
        END IF;
    END LOOP;

    REVOKE ALL ON SCHEMA ml FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA ml FROM PUBLIC;
    REVOKE ALL ON ALL ROUTINES IN SCHEMA ml FROM PUBLIC;
    GRANT USAGE ON SCHEMA ml TO pgsight_user, pgsight_worker, pgsight_loopback;
    GRANT EXECUTE ON ALL ROUTINES IN SCHEMA ml TO pgsight_user, pgsight_worker, pgsight_loopback;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA ml TO pgsight_user, pgsight_worker, pgsight_loopback;

    -- users: register models, declare columns, queue and follow jobs
    GRANT SELECT ON ml.settings, ml.model_kinds, ml.workers, ml.errors TO pgsight_user;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ml.models, ml.tasks, ml.jobs, ml.queue TO pgsight_user;
    GRANT SELECT, DELETE ON ml.blobs TO pgsight_user;
    -- query-time requests: no privileges on ml.rpc for users or the loopback; they go through
    -- ml._rpc_ticket / _rpc_submit / _rpc_state / _rpc_forget (SECURITY DEFINER, token-checked; udf/rpc.sql)
    REVOKE ALL ON ml.rpc FROM pgsight_user, pgsight_loopback;
    -- the loopback session: query-time requests, job status, jobs submitted on a user's behalf
    GRANT SELECT ON ml.settings, ml.workers TO pgsight_loopback;
    GRANT SELECT, INSERT ON ml.jobs TO pgsight_loopback;
    -- workers: the whole queue side of ml (not ml.loopback)
    GRANT SELECT, INSERT, UPDATE, DELETE ON ml.settings, ml.model_kinds, ml.models, ml.blobs, ml.tasks, ml.workers,
        ml.jobs, ml.queue, ml.errors, ml.rpc TO pgsight_worker;
    -- the dedicated loopback role is shared by every user's loopback session: its statements (request
    -- payloads, tokens) must not show in pg_stat_activity to another session of the same role
    BEGIN
        ALTER ROLE pgsight_loopback SET track_activities = off;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'pgsight: as a superuser, run ALTER ROLE pgsight_loopback SET track_activities = off';
    END;
END $$;
