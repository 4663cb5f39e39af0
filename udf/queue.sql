-- The worker's side of the row queue: claim, write back, fail, retry, reap. One claim query, in
-- one place; batch size is a parameter; attempts are counted at claim time.

CREATE OR REPLACE FUNCTION ml.worker_register(hostname text, pid int, device text, info jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    INSERT INTO ml.workers (hostname, pid, device, info) VALUES (hostname, pid, device, info) RETURNING id
$$;

-- false when the worker was reaped (it was silent too long): it must register again.
CREATE OR REPLACE FUNCTION ml.worker_heartbeat(worker bigint) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    WITH u AS (UPDATE ml.workers SET heartbeat_at = now() WHERE id = worker RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- Hand back the rows a worker claimed (after it lost its connection mid-batch, or on exit).
CREATE OR REPLACE FUNCTION ml.worker_release(worker bigint) RETURNS int
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    WITH r AS (UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL WHERE claimed_by = worker RETURNING 1)
    SELECT count(*)::int FROM r
$$;

CREATE OR REPLACE FUNCTION ml.worker_unregister(worker bigint) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    SELECT ml.worker_release(worker);
    UPDATE ml.jobs SET status = 'queued', claimed_by = NULL, lease_until = NULL
        WHERE claimed_by = worker AND status = 'running' AND kind <> 'backfill';
    UPDATE ml.rpc SET status = 'pending', claimed_by = NULL WHERE claimed_by = worker AND status = 'running';
    DELETE FROM ml.workers WHERE id = worker;
$$;

-- Hand the work of dead workers (no heartbeat for worker_timeout) and of expired leases to others.
CREATE OR REPLACE FUNCTION ml.reap() RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
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
    -- requests nobody waits for any more
    DELETE FROM ml.rpc WHERE created_at < now() - interval '1 hour';
    RETURN n;
END $$;

-- Claim up to n rows of one task (the oldest waiting task first) and return them with their sources.
CREATE OR REPLACE FUNCTION ml.claim(worker bigint, n int)
RETURNS TABLE (queue_id bigint, task_id int, key text, present boolean, src text, src_bytes bytea, src_hash text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    tid int;
    t ml.tasks;
    ids bigint[];
    keys text[];
    is_bytea boolean;
    lease_end timestamptz := now() + ml.setting('lease')::interval;
BEGIN
    SELECT q.task_id INTO tid FROM ml.queue q
    WHERE (q.lease_until IS NULL OR q.lease_until < now()) AND (q.not_before IS NULL OR q.not_before <= now())
    ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF tid IS NULL THEN
        RETURN;
    END IF;
    WITH c AS (
        SELECT q.id FROM ml.queue q
        WHERE q.task_id = tid AND (q.lease_until IS NULL OR q.lease_until < now())
          AND (q.not_before IS NULL OR q.not_before <= now())
        ORDER BY q.id LIMIT n FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE ml.queue q SET lease_until = lease_end, claimed_by = worker,
                              attempts = q.attempts + 1
        FROM c WHERE q.id = c.id
        RETURNING q.id, q.key, q.job_id
    ), j AS (
        UPDATE ml.jobs SET status = 'running', started_at = coalesce(started_at, now())
        WHERE id IN (SELECT DISTINCT u.job_id FROM u) AND status = 'queued'
    )
    SELECT array_agg(u.id ORDER BY u.id), array_agg(u.key ORDER BY u.id) INTO ids, keys FROM u;

    SELECT * INTO t FROM ml.tasks WHERE id = tid;
    IF NOT FOUND THEN  -- the column was dropped: nothing to do for these rows
        DELETE FROM ml.queue WHERE ml.queue.task_id = tid;
        RETURN;
    END IF;
    is_bytea := (SELECT atttypid = 'bytea'::regtype FROM pg_attribute
                 WHERE attrelid = t.table_name AND attname = t.source_col);
    -- LATERAL: one primary-key lookup per row, whatever the table's size (a hash join would scan it)
    RETURN QUERY EXECUTE format(
        'SELECT q.id, %s, q.key, x.found IS NOT NULL, x.src_text, x.src_bytes, x.src_hash
         FROM unnest($1::bigint[], $2::text[]) AS q(id, key)
         LEFT JOIN LATERAL (SELECT true AS found, %s AS src_text, %s AS src_bytes, md5(y.%I) AS src_hash
                            FROM %s y WHERE y.%I = q.key::%s LIMIT 1) x ON true
         ORDER BY q.id',
        tid,
        CASE WHEN is_bytea THEN 'NULL::text' ELSE format('y.%I::text', t.source_col) END,
        CASE WHEN is_bytea THEN format('y.%I', t.source_col) ELSE 'NULL::bytea' END,
        t.source_col, t.table_name, t.key_col, t.key_type)
    USING ids, keys;
END $$;

-- What a worker needs to know about a task to compute it.
CREATE OR REPLACE FUNCTION ml.task_info(tid int)
RETURNS TABLE (id int, kind text, table_name text, model text, model_kind text, model_version int,
               source_col text, result_col text, modality text, question text)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml AS $$
    SELECT t.id, t.kind, t.table_name::text, t.model, m.kind, m.version, t.source_col, t.result_col,
           t.modality, t.question
    FROM ml.tasks t JOIN ml.models m ON m.name = t.model WHERE t.id = tid
$$;

-- Remove finished rows from the queue and count them on their jobs.
CREATE OR REPLACE FUNCTION ml._complete(worker bigint, queue_ids bigint[], as_failed boolean) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
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

-- Write a batch of embeddings. A row whose source changed since it was claimed is left alone:
-- the change queued it again and a later batch writes the new result.
CREATE OR REPLACE FUNCTION ml.write_embeddings(worker bigint, tid int, queue_ids bigint[], keys text[],
                                               hashes text[], vecs vector[]) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, ml AS $$
DECLARE
    t ml.tasks := (SELECT t FROM ml.tasks t WHERE id = tid);
    n int := 0;
BEGIN
    IF t.id IS NOT NULL THEN
        EXECUTE format(
            'UPDATE %s x SET %I = v.vec FROM unnest($1::text[], $2::text[], $3::vector[]) AS v(key, h, vec)
             WHERE x.%I = v.key::%s AND x.%I = ANY ($1::%s[]) AND md5(x.%I) IS NOT DISTINCT FROM v.h',
            t.table_name, t.result_col, t.key_col, t.key_type, t.key_col, t.key_type, t.source_col)
        USING keys, hashes, vecs;
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM ml._forget_errors(tid, keys);
    END IF;
    PERFORM ml._complete(worker, queue_ids, false);
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION ml.write_predictions(worker bigint, tid int, queue_ids bigint[], keys text[],
                                                hashes text[], answers text[], scores real[]) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    t ml.tasks := (SELECT t FROM ml.tasks t WHERE id = tid);
    n int := 0;
BEGIN
    IF t.id IS NOT NULL THEN
        EXECUTE format(
            'UPDATE %s x SET %I = v.answer, %I = v.score
             FROM unnest($1::text[], $2::text[], $3::text[], $4::real[]) AS v(key, h, answer, score)
             WHERE x.%I = v.key::%s AND x.%I = ANY ($1::%s[]) AND md5(x.%I) IS NOT DISTINCT FROM v.h',
            t.table_name, t.result_col, t.result_col || '_score', t.key_col, t.key_type, t.key_col, t.key_type,
            t.source_col)
        USING keys, hashes, answers, scores;
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM ml._forget_errors(tid, keys);
    END IF;
    PERFORM ml._complete(worker, queue_ids, false);
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION ml._forget_errors(tid int, keys text[]) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    DELETE FROM ml.errors e WHERE e.task_id = tid AND e.row_key = ANY (keys)
      AND EXISTS (SELECT 1 FROM ml.errors e2 WHERE e2.task_id = tid)
$$;

-- Rows that cannot be computed (missing file, corrupt image ...): NULL result, one line in ml.errors.
CREATE OR REPLACE FUNCTION ml.fail_rows(worker bigint, tid int, queue_ids bigint[], keys text[], errors text[])
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    t ml.tasks := (SELECT t FROM ml.tasks t WHERE id = tid);
BEGIN
    IF t.id IS NOT NULL THEN
        PERFORM ml._forget_errors(tid, keys);
        INSERT INTO ml.errors (task_id, job_id, table_name, row_key, column_name, model, error)
        SELECT tid, q.job_id, t.table_name::text, e.key, t.result_col, t.model, e.error
        FROM unnest(queue_ids, keys, errors) AS e(qid, key, error) LEFT JOIN ml.queue q ON q.id = e.qid;
        EXECUTE format('UPDATE %s x SET %I = NULL%s WHERE x.%I = ANY ($1::%s[])', t.table_name, t.result_col,
                       CASE WHEN t.kind = 'prediction' THEN format(', %I = NULL', t.result_col || '_score') ELSE '' END,
                       t.key_col, t.key_type)
        USING keys;
    END IF;
    PERFORM ml._complete(worker, queue_ids, true);
END $$;

-- A batch failed for a passing reason (the model crashed, the device ran out of memory ...): try the
-- rows again later with exponential backoff; after max_attempts they become per-row errors.
CREATE OR REPLACE FUNCTION ml.retry_rows(worker bigint, tid int, queue_ids bigint[], error text) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    max_attempts int := ml.setting('max_attempts')::int;
    dead_ids bigint[];
    dead_keys text[];
BEGIN
    SELECT array_agg(id), array_agg(key) INTO dead_ids, dead_keys FROM ml.queue
    WHERE id = ANY (queue_ids) AND claimed_by = worker AND attempts >= max_attempts;
    IF dead_ids IS NOT NULL THEN
        PERFORM ml.fail_rows(worker, tid, dead_ids, dead_keys,
            array_fill(format('gave up after %s attempts: %s', max_attempts, error), ARRAY[cardinality(dead_ids)]));
    END IF;
    UPDATE ml.queue SET lease_until = NULL, claimed_by = NULL, last_error = error,
        not_before = now() + least(interval '1 second' * power(2, attempts), interval '5 minutes')
    WHERE id = ANY (queue_ids) AND claimed_by = worker;
    RETURN coalesce(cardinality(dead_ids), 0);
END $$;

-- Backfills with no rows left are done. Called by workers after each batch (cheap: two indexes).
CREATE OR REPLACE FUNCTION ml.finish_jobs() RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
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
