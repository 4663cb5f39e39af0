-- Fault isolation on the SQL side: a task's columns followed through renames, table-level failures
-- of a task (state, error, backoff), DDL event triggers, and the procedures that submit, commit and
-- wait in one statement.

-- A task with the current names of its columns, looked up by attribute number (a RENAME is
-- followed even where no event trigger keeps ml.tasks up to date). NULL when the task or its table
-- is gone.
CREATE OR REPLACE FUNCTION ml_private._task(tid int) RETURNS ml.tasks
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    t ml.tasks;
BEGIN
    SELECT * INTO t FROM ml.tasks WHERE id = tid;
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = t.table_name) THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(max(attname) FILTER (WHERE attnum = t.key_attnum), t.key_col),
           coalesce(max(format_type(atttypid, atttypmod)) FILTER (WHERE attnum = t.key_attnum), t.key_type),
           coalesce(max(attname) FILTER (WHERE attnum = t.source_attnum), t.source_col),
           coalesce(max(attname) FILTER (WHERE attnum = t.result_attnum), t.result_col)
    INTO t.key_col, t.key_type, t.source_col, t.result_col
    FROM pg_attribute WHERE attrelid = t.table_name AND attnum IN (t.key_attnum, t.source_attnum, t.result_attnum)
      AND NOT attisdropped;
    RETURN t;
END $$;

-- The whole task could not be served (its table is locked, a privilege was revoked, every row of a
-- batch failed the same way ...): record it on the task, back the task off exponentially (capped by
-- the task_backoff_max setting: a fix is picked up soon) and hand back its claimed rows without
-- counting the attempt against them. Other tasks keep being served.
CREATE OR REPLACE FUNCTION ml_internal._task_failed(tid int, err text, queue_ids bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    UPDATE ml.tasks SET state = 'failing', error = err, failures = failures + 1, failed_at = now(),
        not_before = now() + least(interval '1 second' * power(2, least(failures, 20)),
                                   ml.setting('task_backoff_max')::interval)
    WHERE id = tid;
    IF queue_ids IS NOT NULL THEN
        UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL, attempts = greatest(attempts - 1, 0),
            last_error = err
        WHERE id = ANY (queue_ids);
    END IF;
END $$;

-- Worker: a task-level error caught outside SQL (the worker's side of ml_internal._task_failed).
CREATE OR REPLACE FUNCTION ml_internal.task_failed(worker bigint, tid int, queue_ids bigint[], err text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    PERFORM ml_internal._task_failed(tid, err, (SELECT array_agg(id) FROM ml.queue
                                       WHERE id = ANY (queue_ids) AND claimed_by = worker));
END $$;

CREATE OR REPLACE FUNCTION ml_internal._task_ok(tid int) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    UPDATE ml.tasks SET state = 'ok', error = NULL, failures = 0, not_before = NULL
    WHERE id = tid AND (state <> 'ok' OR failures <> 0);
END $$;

-- SQLSTATE classes an error of one row raises (bad data, a constraint, a user trigger's RAISE);
-- anything else hitting every row of a batch is the task's problem (see ml_internal._task_failed).
CREATE OR REPLACE FUNCTION ml_internal._is_row_error(state text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT left(state, 2) IN ('22', '23', 'P0', '27', '09', '44', '2F', '38', '39')
$$;

-- Every row of a batch failed: is it the task's problem? Yes when the error is not of a row's kind,
-- or when it is but every row gave the same message (a trigger that refuses every write).
CREATE OR REPLACE FUNCTION ml_internal._task_level(states text[], errs text[], rows int) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT cardinality(states) = rows AND rows > 0
       AND (NOT ml_internal._is_row_error(states[1])
            OR (rows > 1 AND (SELECT count(DISTINCT e) FROM unnest(errs) e) = 1))
$$;

-- Tasks failing as a whole, for `pgsight status` (and psql).
CREATE OR REPLACE FUNCTION ml.status_failing()
RETURNS TABLE (table_name text, result_col text, failures int, error text, failed_at timestamptz, retry_in interval)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT t.table_name::text, t.result_col, t.failures, t.error, t.failed_at,
                        greatest(t.not_before - now(), interval '0')
                 FROM ml.tasks t WHERE t.state = 'failing' ORDER BY t.failed_at DESC;
END $$;
COMMENT ON FUNCTION ml.status_failing() IS
    'status_failing(): derived columns failing as a whole (a privilege revoked, a lock, a trigger that refuses '
    'every write ...), with the error and when the worker tries again.';

-- ALTER TABLE on a table with pgsight columns: follow renames (names refreshed from attribute numbers,
-- the key's type too) and retry a failing task at once (the user may just have fixed it).
-- SECURITY DEFINER: the user altering their table may not write ml.tasks; it never fails their DDL.
CREATE OR REPLACE FUNCTION ml_private._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    tid int;
    t ml.tasks;
BEGIN
    IF to_regclass('ml.tasks') IS NULL THEN
        RETURN;
    END IF;
    FOR tid IN SELECT x.id FROM ml.tasks x
               WHERE x.table_name::oid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() c
                                           WHERE c.classid = 'pg_class'::regclass) LOOP
        t := ml_private._task(tid);
        CONTINUE WHEN t.id IS NULL;
        UPDATE ml.tasks x SET key_col = t.key_col, key_type = t.key_type, source_col = t.source_col,
            result_col = t.result_col, not_before = NULL
        WHERE x.id = tid;
        IF (SELECT relkind FROM pg_class WHERE oid = t.table_name) = 'p' THEN
            PERFORM ml_internal._queue_missing(tid);  -- ATTACH PARTITION brings rows no trigger saw
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgsight: could not follow this ALTER TABLE: %', SQLERRM
        USING HINT = 'the worker looks columns up by number anyway; see ml.tasks';
END $$;

-- Queue the rows of a task that have a source, no result, no queue entry and no recorded error
-- (rows of a partition attached with its rows).
CREATE OR REPLACE FUNCTION ml_internal._queue_missing(tid int) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' AS $$
DECLARE
    t ml.tasks := ml_private._task(tid);
    n bigint;
BEGIN
    IF t.id IS NULL OR t.result_attnum IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('INSERT INTO ml.queue (task_id, key) SELECT %s, x.%I::text FROM %s x '
                   'WHERE x.%I IS NOT NULL AND x.%I IS NULL '
                   'AND NOT EXISTS (SELECT 1 FROM ml.queue q WHERE q.task_id = %s AND q.key = x.%I::text) '
                   'AND NOT EXISTS (SELECT 1 FROM ml.errors e WHERE e.task_id = %s AND e.row_key = x.%I::text)',
                   tid, t.key_col, t.table_name, t.source_col, t.result_col, tid, t.key_col, tid, t.key_col);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('ml_work', tid::text);
    END IF;
    RETURN n;
END $$;

-- A user table, a result column, or the source or key column a task reads, dropped with plain DDL,
-- takes its pgsight task along. Queue rows a worker holds at this moment are skipped (never waited
-- for: no deadlock with ml_internal.claim) and cleaned up by ml_internal.reap. SECURITY DEFINER, as ml_private._on_ddl_end.
CREATE OR REPLACE FUNCTION ml_private._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    gone int[];
BEGIN
    IF to_regclass('ml.tasks') IS NULL THEN
        RETURN;  -- the ml schema itself is being dropped
    END IF;
    SELECT array_agg(DISTINCT t.id) INTO gone
    FROM pg_event_trigger_dropped_objects() o JOIN ml.tasks t ON t.table_name::oid = o.objid
    WHERE o.classid = 'pg_class'::regclass
      AND (o.objsubid = 0 OR o.objsubid IN (t.result_attnum, t.source_attnum, t.key_attnum)
           OR (o.object_type = 'table column' AND o.address_names[cardinality(o.address_names)] = t.result_col));
    IF gone IS NOT NULL THEN
        DELETE FROM ml.queue WHERE id IN (SELECT q.id FROM ml.queue q WHERE q.task_id = ANY (gone)
                                          FOR UPDATE SKIP LOCKED);
        UPDATE ml.jobs SET status = 'cancelled', error = 'table or column dropped', finished_at = now()
        WHERE task_id = ANY (gone) AND status IN ('queued', 'running');
        DELETE FROM ml.tasks WHERE id = ANY (gone);
    END IF;
EXCEPTION WHEN OTHERS THEN  -- never in the way of the user's DROP; orphans are ignored by the worker
    RAISE WARNING 'pgsight: could not forget the pgsight columns of what was dropped: %', SQLERRM;
END $$;

DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE NOTICE 'pgsight: not a superuser, so no event triggers: drop pgsight columns with ml.drop_embedding';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgsight_sql_drop') THEN
        CREATE EVENT TRIGGER pgsight_sql_drop ON sql_drop EXECUTE FUNCTION ml_private._on_sql_drop();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgsight_ddl_end') THEN
        CREATE EVENT TRIGGER pgsight_ddl_end ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION ml_private._on_ddl_end();
    END IF;
END $$;

-- One statement that submits, commits and waits (a procedure: only procedures may COMMIT). Call it
-- outside a transaction block: CALL ml.create_embedding_and_wait('photos', 'clip', 'image_path');
-- No SET clause (a procedure with one cannot commit): every name is schema-qualified.
CREATE OR REPLACE FUNCTION ml_private._check_may_commit(what text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'pgsight: CALL ml.% commits, so it cannot run inside a transaction block', what
            USING HINT = 'run it on its own (autocommit), or call the function and ml.wait(job) after COMMIT';
    END IF;
END $$;

CREATE OR REPLACE PROCEDURE ml.create_embedding_and_wait(table_name regclass, model text, source_col text,
                                                         result_col text DEFAULT 'embedding',
                                                         modality text DEFAULT 'image',
                                                         timeout interval DEFAULT NULL,
                                                         INOUT job_id bigint DEFAULT NULL,
                                                         INOUT status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ml_private._check_may_commit('create_embedding_and_wait');
    job_id := ml.create_embedding(table_name, model, source_col, result_col, modality);
    COMMIT;
    status := ml.wait(job_id, timeout);
END $$;

CREATE OR REPLACE PROCEDURE ml.create_prediction_and_wait(table_name regclass, model text, image_col text,
                                                          question text,
                                                          result_col text DEFAULT 'predict_result',
                                                          timeout interval DEFAULT NULL,
                                                          INOUT job_id bigint DEFAULT NULL,
                                                          INOUT status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ml_private._check_may_commit('create_prediction_and_wait');
    job_id := ml.create_prediction(table_name, model, image_col, question, result_col);
    COMMIT;
    status := ml.wait(job_id, timeout);
END $$;

CREATE OR REPLACE PROCEDURE ml.build_model_and_wait(name text, kind text, query text, options jsonb DEFAULT '{}',
                                                    timeout interval DEFAULT NULL,
                                                    INOUT job_id bigint DEFAULT NULL,
                                                    INOUT status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ml_private._check_may_commit('build_model_and_wait');
    job_id := ml.build_model(name, kind, query, options);
    COMMIT;
    status := ml.wait(job_id, timeout);
END $$;

COMMENT ON PROCEDURE ml.create_embedding_and_wait IS
    'ml.create_embedding, COMMIT, ml.wait: one statement, outside a transaction block. Returns (job_id, status).';
COMMENT ON PROCEDURE ml.create_prediction_and_wait IS
    'ml.create_prediction, COMMIT, ml.wait: one statement, outside a transaction block. Returns (job_id, status).';
COMMENT ON PROCEDURE ml.build_model_and_wait IS
    'ml.build_model, COMMIT, ml.wait: one statement, outside a transaction block. Returns (job_id, status).';
