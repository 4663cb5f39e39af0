-- Roles and privileges for a least-privilege setup (applied last, idempotent).
--   pgsight_user     group role for people and applications that call ml.* on their own tables:
--                    they read ml tables (row-level security shows them their own tasks, jobs,
--                    errors and queue rows; models are read by all) and change them only through
--                    ml functions (udf/security.sql); no INSERT/UPDATE/DELETE of their own
--   pgsight_admin    sees every row; may replace, drop or cancel any user's models and jobs
--   pgsight_worker   group role for the worker's login role: the ml queue, and exactly the columns
--                    of user tables that pgsight columns read and write (granted per column)
--   pgsight_loopback the role the loopback connection may log in as (query-time requests, job
--                    status); NOLOGIN until an administrator configures it (see README)
-- Superusers and table owners keep working as before; PUBLIC gets nothing in schemas ml, ml_private and
-- ml_internal; users get nothing in ml_internal (the worker's plumbing).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgsight_user', 'pgsight_worker', 'pgsight_loopback', 'pgsight_admin'] LOOP
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
    GRANT USAGE ON SCHEMA ml TO pgsight_user, pgsight_worker, pgsight_loopback, pgsight_admin;
    GRANT EXECUTE ON ALL ROUTINES IN SCHEMA ml TO pgsight_user, pgsight_worker, pgsight_loopback, pgsight_admin;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA ml TO pgsight_user, pgsight_worker, pgsight_loopback;
    -- what older versions granted users, taken back (this file is re-applied to existing databases)
    REVOKE ALL ON ml.settings, ml.model_kinds, ml.models, ml.blobs, ml.tasks, ml.workers, ml.jobs, ml.queue,
        ml.errors FROM pgsight_user, pgsight_admin;

    -- users: read; every change goes through ml functions (the SECURITY DEFINER helpers of security.sql)
    GRANT SELECT ON ml.settings, ml.model_kinds, ml.workers, ml.models, ml.tasks, ml.jobs, ml.queue, ml.errors
        TO pgsight_user, pgsight_admin;
    -- query-time requests: no privileges on ml.rpc for users or the loopback; they go through
    -- ml_private._rpc_ticket / _rpc_submit / _rpc_state / _rpc_forget (SECURITY DEFINER, token-checked; udf/rpc.sql)
    REVOKE ALL ON ml.rpc FROM pgsight_user, pgsight_loopback, pgsight_admin;
    GRANT SELECT ON ml.rpc TO pgsight_admin;
    -- the loopback session: query-time requests, job status (evaluation jobs: ml_private._job_submit)
    GRANT SELECT ON ml.settings, ml.workers TO pgsight_loopback;
    -- no row of ml.jobs either: a user holds her loopback connection in her own session, and a dedicated
    -- loopback role is every user's; job states go through ml_private._job_state (a ticket for the caller)
    REVOKE ALL ON ml.jobs FROM pgsight_loopback;
    -- workers: the whole queue side of ml (not ml.loopback)
    GRANT SELECT, INSERT, UPDATE, DELETE ON ml.settings, ml.model_kinds, ml.models, ml.blobs, ml.tasks, ml.workers,
        ml.jobs, ml.queue, ml.errors, ml.rpc TO pgsight_worker;
    -- the private helpers of the ml functions (udf/internal.sql) run with the caller's rights: as ml's
    REVOKE ALL ON SCHEMA ml_private FROM PUBLIC;
    REVOKE ALL ON ALL ROUTINES IN SCHEMA ml_private FROM PUBLIC;
    GRANT USAGE ON SCHEMA ml_private TO pgsight_user, pgsight_worker, pgsight_loopback, pgsight_admin;
    GRANT EXECUTE ON ALL ROUTINES IN SCHEMA ml_private TO pgsight_user, pgsight_worker, pgsight_loopback, pgsight_admin;
    -- the worker's plumbing (udf/internal.sql): the worker only; users, the loopback and PUBLIC have
    -- no rights there (functions are executable by PUBLIC unless revoked)
    REVOKE ALL ON SCHEMA ml_internal FROM PUBLIC, pgsight_user, pgsight_loopback, pgsight_admin;
    REVOKE ALL ON ALL ROUTINES IN SCHEMA ml_internal FROM PUBLIC, pgsight_user, pgsight_loopback, pgsight_admin;
    GRANT USAGE ON SCHEMA ml_internal TO pgsight_worker;
    GRANT EXECUTE ON ALL ROUTINES IN SCHEMA ml_internal TO pgsight_worker;
    -- workers reach user tables through the table owners' functions (udf/owner.sql)
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'ml_owner') THEN
        GRANT USAGE ON SCHEMA ml_owner TO pgsight_worker;
    END IF;
    -- the dedicated loopback role is shared by every user's loopback session: its statements (request
    -- payloads, tokens) must not show in pg_stat_activity to another session of the same role
    BEGIN
        ALTER ROLE pgsight_loopback SET track_activities = off;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'pgsight: as a superuser, run ALTER ROLE pgsight_loopback SET track_activities = off';
    END;
END $$;
