-- The worker's side of the row queue: claim, write back, fail, retry, reap. One claim query, in
-- one place; batch size is a parameter; attempts are counted at claim time.

CREATE OR REPLACE FUNCTION ml_internal.worker_register(hostname text, pid int, device text, info jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    INSERT INTO ml.workers (hostname, pid, device, info) VALUES (hostname, pid, device, info) RETURNING id
$$;

-- false when the worker was reaped (it was silent too long): it must register again.
CREATE OR REPLACE FUNCTION ml_internal.worker_heartbeat(worker bigint) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    WITH u AS (UPDATE ml.workers SET heartbeat_at = now() WHERE id = worker RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- Hand back the rows a worker claimed (after it lost its connection mid-batch, or on exit).
CREATE OR REPLACE FUNCTION ml_internal.worker_release(worker bigint) RETURNS int
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    WITH r AS (UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL WHERE claimed_by = worker RETURNING 1)
    SELECT count(*)::int FROM r
$$;

CREATE OR REPLACE FUNCTION ml_internal.worker_unregister(worker bigint) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_internal.worker_release(worker);
    UPDATE ml.jobs SET status = 'queued', claimed_by = NULL, lease_until = NULL
        WHERE claimed_by = worker AND status = 'running' AND kind <> 'backfill';
    UPDATE ml.rpc SET status = 'pending', claimed_by = NULL WHERE claimed_by = worker AND status = 'running';
    DELETE FROM ml.workers WHERE id = worker;
$$;

-- Hand the work of dead workers (no heartbeat for worker_timeout) and of expired leases to others.
CREATE OR REPLACE FUNCTION ml_internal.reap() RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    dead bigint[];
    n int := 0;
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO dead FROM ml.workers
    WHERE heartbeat_at < now() - ml.setting('worker_timeout')::interval;
    IF cardinality(dead) > 0 THEN
        UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL WHERE claimed_by = ANY (dead);
        GET DIAGNOSTICS n = ROW_COUNT;
        UPDATE ml.rpc SET status = 'pending', claimed_by = NULL WHERE claimed_by = ANY (dead) AND status = 'running';
        DELETE FROM ml.workers WHERE id = ANY (dead);
    END IF;
    -- training/evaluation jobs whose worker died or whose lease ran out go back to the queue
    UPDATE ml.jobs SET status = 'queued', claimed_by = NULL, lease_until = NULL
    WHERE kind <> 'backfill' AND status = 'running'
      AND (claimed_by = ANY (dead) OR lease_until < now()
           OR NOT EXISTS (SELECT 1 FROM ml.workers w WHERE w.id = jobs.claimed_by));
    -- rows of tasks that are gone (a drop skipped the rows a worker held at that moment)
    WITH RECURSIVE ids AS (
        SELECT min(q.task_id) AS t FROM ml.queue q
        UNION ALL
        SELECT (SELECT min(q.task_id) FROM ml.queue q WHERE q.task_id > ids.t) FROM ids WHERE ids.t IS NOT NULL
    )
    DELETE FROM ml.queue WHERE id IN (
        SELECT q.id FROM ml.queue q
        WHERE q.task_id IN (SELECT ids.t FROM ids WHERE ids.t IS NOT NULL
                            AND NOT EXISTS (SELECT 1 FROM ml.tasks tk WHERE tk.id = ids.t))
        LIMIT 10000 FOR UPDATE SKIP LOCKED);
    -- requests nobody waits for any more
    DELETE FROM ml.rpc WHERE created_at < now() - interval '1 hour';
    RETURN n;
END $$;

-- Claim up to n rows of one task (the task whose oldest waiting row is oldest, among tasks not
-- backing off) and return them with their sources. Never raises for a user table's sake: a table
-- another session holds (a DROP, an ALTER) is skipped for now (lock_timeout, taken before any queue
-- row is locked, so no deadlock); an error of one row is that row's (retried with backoff, then
-- dead-lettered); an error of every row is the task's (ml_internal._task_failed) and the next task is served.
-- Keys are compared as text written under fixed settings (see ml_private._backfill).
-- enable_sort = off, enable_seqscan = off: the queue rows are found through queue_task_idx and the
-- primary key whatever the statistics say. A backfill fills ml.queue faster than autovacuum analyzes
-- it, and with the stale statistics the planner read and sorted the whole queue for every claim (a
-- Sort under LockRows is not bounded by the LIMIT) and joined the claimed ids to a scan of the whole
-- queue: 0.4 s per 256-row claim at 100k queued rows instead of 0.4 ms (docs/scale.md).
CREATE OR REPLACE FUNCTION ml_internal.claim(worker bigint, n int)
RETURNS TABLE (queue_id bigint, task_id int, key text, present boolean, src text, src_bytes bytea, src_hash text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET lock_timeout = '200ms' SET enable_sort = off SET enable_seqscan = off AS $$
DECLARE
    cand int;
    t ml.tasks;
    ids bigint[];
    keys text[];
    got boolean[];
    texts text[];
    bytes bytea[];
    hashes text[];
    g boolean[];
    tx text[];
    b bytea[];
    h text[];
    rls boolean := false;
    reader name;
    lease_end timestamptz := now() + ml.setting('lease')::interval;
    bad int[];
    errs text[];
    states text[];
    st text;
    msg text;
    hidden int[];
BEGIN
    FOR cand IN
        SELECT c.id FROM (
            SELECT tk.id, (SELECT q.id FROM ml.queue q
                           WHERE (q.task_id, q.id) > (tk.id, 0) AND q.task_id <= tk.id  -- = tk.id, but
                             -- written so that the plan walks queue_task_idx, not the whole primary key
                             AND (q.lease_until IS NULL OR q.lease_until < now())
                             AND (q.not_before IS NULL OR q.not_before <= now())
                           ORDER BY q.task_id, q.id LIMIT 1) AS head
            FROM ml.tasks tk WHERE tk.not_before IS NULL OR tk.not_before <= now()) c
        WHERE c.head IS NOT NULL ORDER BY c.head
    LOOP
        t := ml_private._task(cand);
        CONTINUE WHEN t.id IS NULL;  -- its table is being dropped: the drop event removes it
        BEGIN  -- the table's lock first: a DROP/ALTER holding or awaiting it is skipped, not deadlocked
            PERFORM ml_private._as_owner(t, 'probe');
        EXCEPTION WHEN lock_not_available THEN
            CONTINUE;
        WHEN OTHERS THEN
            PERFORM ml_internal._task_failed(cand, SQLERRM, NULL);
            CONTINUE;
        END;
        WITH c AS (
            SELECT q.id FROM ml.queue q
            WHERE (q.task_id, q.id) > (cand, 0) AND q.task_id <= cand  -- = cand (see above)
              AND (q.lease_until IS NULL OR q.lease_until < now())
              AND (q.not_before IS NULL OR q.not_before <= now())
            ORDER BY q.task_id, q.id LIMIT n FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE ml.queue q SET lease_until = lease_end, claimed_by = worker, attempts = q.attempts + 1
            FROM c WHERE q.id = c.id
            RETURNING q.id, q.key, q.job_id
        ), j AS (
            UPDATE ml.jobs SET status = 'running', started_at = coalesce(started_at, now())
            WHERE id IN (SELECT DISTINCT u.job_id FROM u) AND status = 'queued'
        )
        SELECT array_agg(u.id ORDER BY u.id), array_agg(u.key ORDER BY u.id) INTO ids, keys FROM u;
        CONTINUE WHEN ids IS NULL;

        bad := '{}';
        errs := '{}';
        states := '{}';
        BEGIN
            SELECT o.got, o.texts, o.bytes, o.src_hashes, o.rls, o.reader INTO got, texts, bytes, hashes, rls, reader
            FROM ml_private._as_owner(t, 'read', keys) o;
        EXCEPTION WHEN OTHERS THEN
            -- which rows? one by one (each in its own subtransaction)
            got := array_fill(false, ARRAY[cardinality(ids)]);
            texts := array_fill(NULL::text, ARRAY[cardinality(ids)]);
            bytes := array_fill(NULL::bytea, ARRAY[cardinality(ids)]);
            hashes := array_fill(NULL::text, ARRAY[cardinality(ids)]);
            FOR ix IN 1 .. cardinality(ids) LOOP
                BEGIN
                    SELECT o.got, o.texts, o.bytes, o.src_hashes, o.rls, o.reader INTO g, tx, b, h, rls, reader
                    FROM ml_private._as_owner(t, 'read', ARRAY[keys[ix]]) o;
                    got[ix] := g[1]; texts[ix] := tx[1]; bytes[ix] := b[1]; hashes[ix] := h[1];
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                    bad := bad || ix;
                    errs := errs || ('reading the row: ' || msg);
                    states := states || st;
                END;
            END LOOP;
        END;
        IF ml_internal._task_level(states, errs, cardinality(ids)) THEN
            -- every row failed alike: the task's problem, not the rows'
            PERFORM ml_internal._task_failed(cand, errs[1], ids);
            CONTINUE;
        END IF;
        FOR ix IN 1 .. cardinality(bad) LOOP
            PERFORM ml_internal.retry_rows(worker, cand, ARRAY[ids[bad[ix]]], errs[ix]);
        END LOOP;
        -- rows not seen although they were queued: row-level security hides them from the reader (the
        -- table's owner, which bypasses it unless the table has FORCE ROW LEVEL SECURITY)
        IF rls THEN
            SELECT array_agg(i) INTO hidden FROM generate_subscripts(ids, 1) i WHERE NOT got[i] AND NOT i = ANY (bad);
            IF hidden IS NOT NULL THEN
                PERFORM ml_internal.fail_rows(worker, cand, ARRAY(SELECT ids[i] FROM unnest(hidden) i),
                    ARRAY(SELECT keys[i] FROM unnest(hidden) i),
                    array_fill(format('row not visible to role %s, which reads it for the worker: %s has row-level security',
                                      reader, t.table_name)
                               || ' (or the row was deleted); give that role a policy: '
                               || format('CREATE POLICY pgsight_worker ON %s FOR ALL TO %I USING (true)',
                                         t.table_name, reader), ARRAY[cardinality(hidden)]));
                PERFORM ml_internal.finish_jobs();
                bad := bad || hidden;
            END IF;
        END IF;
        RETURN QUERY SELECT ids[i], cand, keys[i], got[i], texts[i], bytes[i], hashes[i]
                     FROM generate_subscripts(ids, 1) i WHERE NOT i = ANY (bad) ORDER BY i;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END $$;

-- What a worker needs to know about a task to compute it.
CREATE OR REPLACE FUNCTION ml_internal.task_info(tid int)
RETURNS TABLE (id int, kind text, table_name text, model text, model_kind text, model_version int,
               source_col text, result_col text, modality text, question text)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT t.id, t.kind, t.table_name::text, t.model, m.kind, m.version, t.source_col, t.result_col,
           t.modality, t.question
    FROM ml_private._task(tid) t JOIN ml.models m ON m.name = t.model WHERE t.id IS NOT NULL
$$;

-- Remove finished rows from the queue and count them on their jobs.
CREATE OR REPLACE FUNCTION ml_internal._complete(worker bigint, queue_ids bigint[], as_failed boolean) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    WITH d AS (
        DELETE FROM ml.queue WHERE id = ANY (queue_ids) AND claimed_by = worker RETURNING job_id, attempts
    ), c AS (
        SELECT job_id, count(*) AS n, count(*) FILTER (WHERE attempts > 1) AS again
        FROM d WHERE job_id IS NOT NULL GROUP BY job_id
    )
    UPDATE ml.jobs j SET done = j.done + c.n, failed = j.failed + CASE WHEN as_failed THEN c.n ELSE 0 END,
        retried = j.retried + c.again
    FROM c WHERE j.id = c.job_id
$$;

-- Write a batch of results. A row whose source changed since it was claimed is left alone: the
-- change queued it again and a later batch writes the new result. The user's rows are taken with
-- SKIP LOCKED (and the table with a short lock_timeout): a row a user transaction holds is handed
-- back for later, never waited for, so no user transaction is ever a deadlock victim. An error of
-- one row (a user trigger that refuses it ...) is that row's: retried with backoff, then
-- dead-lettered; an error of every row is the task's (ml_internal._task_failed).
CREATE OR REPLACE FUNCTION ml_internal._write_back(worker bigint, tid int, queue_ids bigint[], keys text[], hashes text[],
                                          vecs vector[], answers text[], scores real[]) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET lock_timeout = '200ms' AS $$
DECLARE
    t ml.tasks := ml_private._task(tid);
    wrote text[] := '{}';
    w text[];
    rest_ix int[];
    later_ix int[];
    later bigint[];
    locked int[] := '{}';
    l int[];
    skipped int[];
    hidden int[] := '{}';
    rls_on boolean;
    reader name;
    g boolean[];
    done_ids bigint[];
    done_keys text[];
    bad int[] := '{}';
    errs text[] := '{}';
    states text[] := '{}';
    st text;
    msg text;
    ix int;
BEGIN
    IF t.id IS NULL THEN
        PERFORM ml_internal._complete(worker, queue_ids, false);
        RETURN 0;
    END IF;
    -- one statement, as the table's owner: lock the rows no one else holds (SKIP LOCKED), write those
    -- whose source is unchanged (ml_private._user_table_op)
    BEGIN
        SELECT o.wrote, coalesce(o.out_ints, '{}') INTO wrote, locked
        FROM ml_private._as_owner(t, 'write', keys, hashes, vecs, answers, scores) o;
    EXCEPTION WHEN lock_not_available THEN  -- the table itself is held (a user's DDL): all of them later
        UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL, attempts = greatest(attempts - 1, 0),
            not_before = now() + interval '1 second'
        WHERE id = ANY (queue_ids) AND claimed_by = worker;
        RETURN 0;
    WHEN OTHERS THEN
        FOR ix IN 1 .. cardinality(keys) LOOP  -- which rows? one by one
            BEGIN
                SELECT o.wrote, o.out_ints INTO w, l FROM ml_private._as_owner(t, 'write', ARRAY[keys[ix]], ARRAY[hashes[ix]],
                                                        ARRAY[vecs[ix]], ARRAY[answers[ix]], ARRAY[scores[ix]]) o;
                wrote := wrote || w;
                IF l IS NOT NULL THEN
                    locked := locked || ix;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                bad := bad || ix;
                errs := errs || ('writing the result: ' || msg);
                states := states || st;
            END;
        END LOOP;
        IF ml_internal._task_level(states, errs, cardinality(keys)) THEN
            PERFORM ml_internal._task_failed(tid, errs[1], queue_ids);
            RETURN 0;
        END IF;
    END;
    -- rows not written: deleted or source changed since (done: a change queued the row again), held
    -- by a user transaction (handed back for a retry in a second, without counting the attempt), or
    -- locked by the write itself and skipped by the table (a BEFORE UPDATE trigger returned NULL: the
    -- row's error, retried, then dead-lettered; never handed back forever). Told apart by the committed
    -- source and the write's own locks, never by a lock that may have been released meanwhile.
    SELECT array_agg(i) INTO rest_ix FROM generate_subscripts(keys, 1) i
    WHERE NOT keys[i] = ANY (wrote) AND NOT i = ANY (bad);
    IF rest_ix IS NOT NULL THEN
        SELECT o.out_ints, o.rls, o.reader INTO later_ix, rls_on, reader
        FROM ml_private._as_owner(t, 'unchanged', ARRAY(SELECT keys[i] FROM unnest(rest_ix) i),
                          ARRAY(SELECT hashes[i] FROM unnest(rest_ix) i), ints => rest_ix) o;
        IF rls_on THEN  -- not locked: held by a user transaction, or hidden from an UPDATE by a policy?
            FOREACH ix IN ARRAY coalesce(later_ix, '{}') LOOP
                CONTINUE WHEN ix = ANY (locked);
                BEGIN
                    SELECT o.got INTO g FROM ml_private._as_owner(t, 'lock', ARRAY[keys[ix]]) o;
                    IF g IS NULL THEN
                        hidden := hidden || ix;
                    END IF;
                EXCEPTION WHEN lock_not_available THEN
                    NULL;  -- held: later
                END;
            END LOOP;
            IF cardinality(hidden) > 0 THEN  -- as the claim does with rows a policy hides from reading
                PERFORM ml_internal.fail_rows(worker, tid, ARRAY(SELECT queue_ids[i] FROM unnest(hidden) i),
                    ARRAY(SELECT keys[i] FROM unnest(hidden) i),
                    array_fill(format('row-level security on %s does not let role %s, which writes it for the worker, '
                                      'update this row; give that role a policy: CREATE POLICY pgsight_worker ON %s '
                                      'FOR UPDATE TO %I USING (true)', t.table_name, reader, t.table_name, reader),
                               ARRAY[cardinality(hidden)]));
                later_ix := ARRAY(SELECT i FROM unnest(later_ix) i WHERE NOT i = ANY (hidden));
            END IF;
        END IF;
        later := ARRAY(SELECT queue_ids[i] FROM unnest(coalesce(later_ix, '{}')) i WHERE NOT i = ANY (locked));
        skipped := ARRAY(SELECT i FROM unnest(coalesce(later_ix, '{}')) i WHERE i = ANY (locked));
        IF cardinality(skipped) > 0 THEN
            msg := format('writing the result: %s skipped the update of this row (a BEFORE UPDATE trigger returned NULL)',
                          t.table_name);
            IF cardinality(skipped) = cardinality(keys) AND cardinality(keys) > 1 THEN  -- every row: the task's
                PERFORM ml_internal._task_failed(tid, msg, queue_ids);
                RETURN 0;
            END IF;
            bad := bad || skipped;
            errs := errs || array_fill(msg, ARRAY[cardinality(skipped)]);
        END IF;
        IF cardinality(later) > 0 THEN
            UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL, attempts = greatest(attempts - 1, 0),
                not_before = now() + interval '1 second'
            WHERE id = ANY (later) AND claimed_by = worker;
        END IF;
    END IF;
    FOR ix IN 1 .. cardinality(bad) LOOP
        PERFORM ml_internal.retry_rows(worker, tid, ARRAY[queue_ids[bad[ix]]], errs[ix]);
    END LOOP;
    SELECT array_agg(queue_ids[i]), array_agg(keys[i]) INTO done_ids, done_keys
    FROM generate_subscripts(queue_ids, 1) i
    WHERE NOT i = ANY (bad) AND NOT i = ANY (hidden) AND NOT queue_ids[i] = ANY (coalesce(later, '{}'));
    IF done_ids IS NOT NULL THEN
        PERFORM ml_internal._forget_errors(tid, done_keys);
        PERFORM ml_internal._complete(worker, done_ids, false);
    END IF;
    IF cardinality(wrote) > 0 THEN
        PERFORM ml_internal._task_ok(tid);
    END IF;
    RETURN cardinality(wrote);
END $$;

CREATE OR REPLACE FUNCTION ml_internal.write_embeddings(worker bigint, tid int, queue_ids bigint[], keys text[],
                                               hashes text[], vecs vector[]) RETURNS int
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_internal._write_back(worker, tid, queue_ids, keys, hashes, vecs, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION ml_internal.write_predictions(worker bigint, tid int, queue_ids bigint[], keys text[],
                                                hashes text[], answers text[], scores real[]) RETURNS int
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_internal._write_back(worker, tid, queue_ids, keys, hashes, NULL, answers, scores)
$$;

CREATE OR REPLACE FUNCTION ml_internal._forget_errors(tid int, keys text[]) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    DELETE FROM ml.errors e WHERE e.task_id = tid AND e.row_key = ANY (keys)
      AND EXISTS (SELECT 1 FROM ml.errors e2 WHERE e2.task_id = tid)
$$;

-- Rows that cannot be computed (missing file, corrupt image ...): NULL result, one line in ml.errors.
CREATE OR REPLACE FUNCTION ml_internal.fail_rows(worker bigint, tid int, queue_ids bigint[], keys text[], errors text[])
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET lock_timeout = '200ms' AS $$
DECLARE
    t ml.tasks := ml_private._task(tid);
    k text;
BEGIN
    IF t.id IS NOT NULL THEN
        PERFORM ml_internal._forget_errors(tid, keys);
        INSERT INTO ml.errors (task_id, job_id, table_name, row_key, column_name, model, error)
        SELECT tid, q.job_id, t.table_name::text, e.key, t.result_col, t.model, e.error
        FROM unnest(queue_ids, keys, errors) AS e(qid, key, error) LEFT JOIN ml.queue q ON q.id = e.qid;
        -- a stale result must not stay; row by row, and whatever refuses (a user trigger, a lock) is let be
        FOREACH k IN ARRAY keys LOOP
            BEGIN
                PERFORM ml_private._as_owner(t, 'clear', ARRAY[k]);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
    END IF;
    PERFORM ml_internal._complete(worker, queue_ids, true);
END $$;

-- A batch failed for a passing reason (the model crashed, the device ran out of memory ...): try the
-- rows again later with exponential backoff; after max_attempts they become per-row errors.
CREATE OR REPLACE FUNCTION ml_internal.retry_rows(worker bigint, tid int, queue_ids bigint[], error text) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    max_attempts int := ml.setting('max_attempts')::int;
    dead_ids bigint[];
    dead_keys text[];
BEGIN
    SELECT array_agg(id), array_agg(key) INTO dead_ids, dead_keys FROM ml.queue
    WHERE id = ANY (queue_ids) AND claimed_by = worker AND attempts >= max_attempts;
    IF dead_ids IS NOT NULL THEN
        PERFORM ml_internal.fail_rows(worker, tid, dead_ids, dead_keys,
            array_fill(format('gave up after %s attempts: %s', max_attempts, error), ARRAY[cardinality(dead_ids)]));
    END IF;
    UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL, last_error = error,
        not_before = now() + least(interval '1 second' * power(2, attempts), interval '5 minutes')
    WHERE id = ANY (queue_ids) AND claimed_by = worker;
    RETURN coalesce(cardinality(dead_ids), 0);
END $$;

-- Backfills with no rows left are done. Called by workers after each batch (cheap: two indexes).
CREATE OR REPLACE FUNCTION ml_internal.finish_jobs() RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    n int;
BEGIN
    UPDATE ml.jobs j SET status = CASE WHEN j.failed > 0 AND j.failed = j.total THEN 'failed' ELSE 'done' END,
        finished_at = now(),
        error = CASE WHEN j.failed > 0 THEN format('%s of %s rows failed (first: %s); see ml.errors', j.failed, j.total,
            (SELECT e.error FROM ml.errors e WHERE e.job_id = j.id ORDER BY e.id LIMIT 1)) END
    WHERE j.kind = 'backfill' AND j.status IN ('queued', 'running')
      AND NOT EXISTS (SELECT 1 FROM ml.queue q WHERE q.job_id = j.id)
      AND NOT EXISTS (SELECT 1 FROM ml.tasks t WHERE t.id = j.task_id AND t.index_state = 'pending');
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
