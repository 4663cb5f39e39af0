-- Run-once change: schema ml keeps the user API only. The worker's plumbing moves to ml_internal
-- (users have no rights on it), the private helpers (names starting with _: they run with the
-- caller's rights, as triggers, or as the reviewed SECURITY DEFINER gates) to ml_private.
-- ALTER ROUTINE ... SET SCHEMA keeps each function's oid, so what depends on it (the triggers on
-- user tables, the event triggers, grants) follows; the function files then replace the bodies,
-- which call ml_internal.* and ml_private.*.

CREATE SCHEMA IF NOT EXISTS ml_internal;
REVOKE ALL ON SCHEMA ml_internal FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS ml_private;
REVOKE ALL ON SCHEMA ml_private FROM PUBLIC;

DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS sig, p.proname FROM pg_proc p WHERE p.pronamespace = 'ml'::regnamespace
    LOOP
        IF f.proname = ANY (ARRAY[
                -- the worker's calls (pgsight.worker.db)
                'worker_register', 'worker_heartbeat', 'worker_release', 'worker_unregister', 'reap',
                'claim', 'task_info', 'write_embeddings', 'write_predictions', 'fail_rows', 'retry_rows',
                'finish_jobs', 'task_failed', 'build_pending_index', 'claim_job', 'job_progress', 'job_finish',
                'job_errors', 'rpc_claim', 'rpc_reply', 'register_trained', 'model_info', 'blob_put',
                'blob_delete', 'blob_get',
                -- helpers of those, never run with a user's rights
                '_complete', '_write_back', '_forget_errors', '_task_failed', '_task_ok', '_task_level',
                '_is_row_error', '_queue_missing', '_trigger_failed', '_conninfo_quote', '_query_columns',
                '_acting', '_snapshot_drop']) THEN
            EXECUTE format('ALTER ROUTINE %s SET SCHEMA ml_internal', f.sig);
        ELSIF starts_with(f.proname, '_') THEN
            EXECUTE format('ALTER ROUTINE %s SET SCHEMA ml_private', f.sig);
        END IF;
    END LOOP;
END $$;

-- The functions of ml_owner call ml._owner_exec by name: drop them, the worker makes them again
-- (ml_private._owner_fn) with the new body on its next write to each owner's table.
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF to_regnamespace('ml_owner') IS NOT NULL THEN
        FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'ml_owner'::regnamespace LOOP
            EXECUTE format('DROP FUNCTION %s', f);
        END LOOP;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN  -- made by a superuser's migration: only a superuser drops them
    RAISE WARNING 'pgsight: the functions of schema ml_owner call ml._owner_exec, which moved to ml_private: a '
        'superuser must drop them (the worker makes them again); until then writes to those owners'' tables fail';
END $$;
