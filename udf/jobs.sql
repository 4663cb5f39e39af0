-- Jobs: ml.wait / ml.cancel for users; claim, heartbeat and finish for workers running training
-- and evaluation jobs.

-- The state of a job, for the role a ticket names (ml_private._rpc_ticket: signed in the caller's own
-- backend for its own role): what ml.wait and the evaluation functions read through the loopback
-- connection. Its role reads no ml.jobs row itself: a dedicated loopback role (pgsight_loopback) is
-- shared by every user's loopback session, and a user holds that connection in her own session.
CREATE OR REPLACE FUNCTION ml_private._job_state(job_id bigint, who name, token_hash bytea, ticket text,
                                                 OUT status text, OUT error text, OUT result text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    secret bytea := (SELECT l.secret FROM ml.loopback l);
BEGIN
    IF who IS NULL OR token_hash IS NULL OR octet_length(token_hash) <> 32 OR ticket IS NULL
       OR ticket <> encode(sha256(secret || sha256(secret || convert_to(who::text, 'UTF8') || '\x00'::bytea
                                                   || token_hash)), 'hex') THEN
        RAISE EXCEPTION 'pgsight: job status refused: its ticket does not match'
            USING ERRCODE = 'insufficient_privilege', HINT = 'call ml.wait';
    END IF;
    SELECT j.status, j.error, j.result::text INTO status, error, result
    FROM ml.jobs j WHERE j.id = job_id AND ml_private._may_change(who, j.owner);
END $$;

-- Block until a job ends; returns its final status. Polls through the loopback connection, so it
-- sees the worker's progress whatever the caller's isolation level. A NULL timeout means the
-- wait_timeout setting (10 minutes unless changed): never forever.
CREATE OR REPLACE FUNCTION ml.wait(job_id bigint, timeout interval DEFAULT '10 minutes') RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    conn text;
    deadline timestamptz;
    st text;
    err text;
    pause float8 := 0.02;
    hash bytea := sha256(convert_to(gen_random_uuid()::text, 'UTF8'));
    ticket text;
BEGIN
    IF job_id IS NULL THEN
        RAISE EXCEPTION 'pgsight: ml.wait(NULL): no job id';
    END IF;
    IF timeout IS NULL THEN
        timeout := coalesce(ml.setting('wait_timeout'), '10 minutes')::interval;
        RAISE NOTICE 'pgsight: no timeout given: waiting at most % (setting pgsight.wait_timeout)', timeout;
    END IF;
    IF EXISTS (SELECT 1 FROM ml.jobs j WHERE j.id = job_id AND j.xmin = pg_current_xact_id_if_assigned()::xid) THEN
        RAISE EXCEPTION 'pgsight: job % was created in this transaction, which has not committed: no worker can see it yet', job_id
            USING HINT = format('COMMIT first, then SELECT ml.wait(%s); for one statement: CALL ml.create_embedding_and_wait(...) '
                                '(or ml.create_prediction_and_wait, ml.build_model_and_wait)', job_id);
    END IF;
    conn := ml_private._loopback();
    ticket := ml_private._rpc_ticket(current_user, hash);
    deadline := clock_timestamp() + timeout;
    LOOP
        SELECT r.status, r.error INTO st, err
        -- the caller's own job (or one it may change), with a ticket for its role: the loopback's reads none
        FROM public.dblink(conn, format('SELECT status, error FROM ml_private._job_state(%s, %L, %L::bytea, %L)',
                                        job_id, current_user, hash, ticket)) AS r(status text, error text);
        IF st IS NULL THEN
            IF EXISTS (SELECT 1 FROM ml.jobs j WHERE j.id = job_id) THEN
                RAISE EXCEPTION 'pgsight: job % was created in this transaction, which has not committed: no worker can see it yet', job_id
                    USING HINT = format('COMMIT first, then SELECT ml.wait(%s); for one statement: CALL ml.create_embedding_and_wait(...) '
                                        '(or ml.create_prediction_and_wait, ml.build_model_and_wait)', job_id);
            END IF;
            RAISE EXCEPTION 'pgsight: no job %', job_id;
        END IF;
        IF st IN ('done', 'failed', 'cancelled') THEN
            IF err IS NOT NULL THEN
                RAISE NOTICE 'pgsight: job % %: %', job_id, st, err;
            END IF;
            RETURN st;
        END IF;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'pgsight: job % still % after %', job_id, st, timeout
                USING HINT = 'see SELECT * FROM ml.jobs WHERE id = ' || job_id || '; is a worker running (ml.workers)?';
        END IF;
        PERFORM pg_sleep(pause);
        -- quick to notice a short job's end, gentle on the server for a long one
        pause := least(pause * 1.5, CASE WHEN clock_timestamp() < deadline - timeout + interval '30 seconds'
                                         THEN 0.05 ELSE 0.5 END);
    END LOOP;
END $$;
COMMENT ON FUNCTION ml.wait(bigint, interval) IS
    'wait(job_id, timeout DEFAULT ''10 minutes'') -> the job''s final status (done, failed, cancelled). Blocks '
    'until the job ends; NULL timeout: the wait_timeout setting. Sees the worker''s progress whatever the '
    'isolation level.';

CREATE OR REPLACE FUNCTION ml.cancel(job_id bigint) RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._job_cancel(job_id, current_user)  -- the caller's own jobs (pgsight_admin: any)
$$;
COMMENT ON FUNCTION ml.cancel(bigint) IS
    'cancel(job_id) -> the job''s status afterwards. Cancels a queued or running job of the caller''s '
    '(pgsight_admin: anyone''s); a running one stops at its next progress report.';

-- Worker: take the oldest queued training/evaluation job of the given kinds.
CREATE OR REPLACE FUNCTION ml_internal.claim_job(worker bigint, kinds text[] DEFAULT '{train,evaluate}')
RETURNS SETOF ml.jobs LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    UPDATE ml.jobs SET status = 'running', claimed_by = worker, attempts = attempts + 1,
        started_at = coalesce(started_at, now()), lease_until = now() + ml.setting('lease')::interval
    WHERE id = (SELECT id FROM ml.jobs WHERE status = 'queued' AND kind = ANY (kinds)
                ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING *
$$;

-- Worker: report progress and extend the lease. Returns the job's status: a worker that gets back
-- anything but 'running' (cancelled, or handed to another worker) stops.
CREATE OR REPLACE FUNCTION ml_internal.job_progress(job_id bigint, worker bigint, done bigint, total bigint,
                                           progress jsonb DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    st text;
BEGIN
    UPDATE ml.jobs j SET done = coalesce(job_progress.done, j.done), total = coalesce(job_progress.total, j.total),
        progress = j.progress || coalesce(job_progress.progress, '{}'),
        lease_until = now() + ml.setting('lease')::interval
    WHERE j.id = job_id AND j.claimed_by = worker AND j.status = 'running'
    RETURNING j.status INTO st;
    IF st IS NULL THEN
        SELECT CASE WHEN j.status = 'running' THEN 'lost' ELSE j.status END INTO st FROM ml.jobs j WHERE j.id = job_id;
    END IF;
    RETURN coalesce(st, 'lost');
END $$;

CREATE OR REPLACE FUNCTION ml_internal.job_finish(job_id bigint, worker bigint, status text, error text DEFAULT NULL,
                                         result jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    UPDATE ml.jobs j SET status = job_finish.status, error = job_finish.error, result = job_finish.result,
        finished_at = now(), lease_until = NULL
    WHERE j.id = job_id AND j.claimed_by = worker AND j.status = 'running';
    -- in the same transaction: whoever sees the job over sees its snapshot gone
    SELECT ml_internal._snapshot_drop(job_id);
$$;

-- Worker: per-row problems of a training/evaluation job (an unreadable image ...) into ml.errors;
-- ml.jobs.failed counts them. Idempotent per row key, so a resumed job does not count a row twice.
CREATE OR REPLACE FUNCTION ml_internal.job_errors(job_id bigint, keys text[], column_name text, errors text[]) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    INSERT INTO ml.errors (job_id, model, row_key, column_name, error)
    SELECT job_errors.job_id, (SELECT j.model FROM ml.jobs j WHERE j.id = job_errors.job_id), e.key,
           job_errors.column_name, e.error
    FROM unnest(keys, errors) AS e(key, error)
    WHERE NOT EXISTS (SELECT 1 FROM ml.errors x WHERE x.job_id = job_errors.job_id AND x.row_key = e.key);
    UPDATE ml.jobs j SET failed = (SELECT count(*) FROM ml.errors x WHERE x.job_id = job_errors.job_id)
    WHERE j.id = job_errors.job_id;
$$;
