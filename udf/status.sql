-- What `pgsight status` shows, readable from psql as well: jobs with their progress, workers alive,
-- the backlog of each derived column and per-row error counts. Read-only; idempotent.

-- Open jobs, and jobs that ended within `recent`. rows_per_s is the job's average since it started;
-- eta assumes it keeps that pace.
CREATE OR REPLACE FUNCTION ml.status_jobs(recent interval DEFAULT '10 minutes', max_rows int DEFAULT 50)
RETURNS TABLE (id bigint, kind text, model text, table_name text, status text, done bigint, failed bigint,
               total bigint, rows_per_s real, eta interval, elapsed interval, error text, progress jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT j.id, j.kind, j.model, j.table_name, j.status, j.done, j.failed, j.total, r.rate::real,
           CASE WHEN j.status = 'running' AND r.rate > 0 AND j.total IS NOT NULL AND j.total > j.done
                THEN make_interval(secs => (j.total - j.done) / r.rate) END,
           coalesce(j.finished_at, now()) - j.started_at, j.error, j.progress
    FROM ml.jobs j
    CROSS JOIN LATERAL (
        SELECT CASE WHEN j.started_at IS NOT NULL AND j.done > 0
                         AND coalesce(j.finished_at, now()) > j.started_at
                    THEN j.done / extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at)::float8
               END AS rate) r
    WHERE j.status IN ('queued', 'running') OR j.finished_at > now() - recent
    ORDER BY (j.status IN ('queued', 'running')) DESC, j.id DESC
    LIMIT max_rows
$$;
COMMENT ON FUNCTION ml.status_jobs(interval, integer) IS
    'status_jobs(recent DEFAULT ''10 minutes'', max_rows DEFAULT 50): open jobs and jobs that ended within '
    'recent, with progress, rows per second and an ETA.';

-- Registered workers; alive = heartbeat within the worker_timeout setting (dead ones are reaped by
-- the others).
CREATE OR REPLACE FUNCTION ml.status_workers()
RETURNS TABLE (id bigint, hostname text, pid int, device text, alive boolean, heartbeat_age interval,
               started_at timestamptz, info jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT w.id, w.hostname, w.pid, w.device,
           w.heartbeat_at > now() - ml.setting('worker_timeout')::interval,
           now() - w.heartbeat_at, w.started_at, w.info
    FROM ml.workers w ORDER BY w.id
$$;
COMMENT ON FUNCTION ml.status_workers() IS
    'status_workers(): registered workers, their device, and whether they are alive (heartbeat within '
    'worker_timeout).';

-- Each derived column (ml.tasks) with the rows still waiting for a worker: pending (not claimed),
-- in_flight (claimed, lease running), retrying (backing off after a passing failure), the age of
-- the oldest waiting row, and its per-row errors.
CREATE OR REPLACE FUNCTION ml.status_backlog()
RETURNS TABLE (table_name text, result_col text, model text, task_kind text, pending bigint, in_flight bigint,
               retrying bigint, oldest_pending interval, errors bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT t.table_name::text, t.result_col, t.model, t.kind,
           q.pending, q.in_flight, q.retrying, now() - q.oldest, e.n
    FROM ml.tasks t
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE (x.lease_until IS NULL OR x.lease_until < now())
                                  AND (x.not_before IS NULL OR x.not_before <= now())) AS pending,
               count(*) FILTER (WHERE x.lease_until >= now()) AS in_flight,
               count(*) FILTER (WHERE x.not_before > now() AND (x.lease_until IS NULL OR x.lease_until < now()))
                   AS retrying,
               min(x.queued_at) AS oldest
        FROM ml.queue x WHERE x.task_id = t.id) q
    CROSS JOIN LATERAL (SELECT count(*) AS n FROM ml.errors er WHERE er.task_id = t.id) e
    ORDER BY t.table_name::text, t.result_col
$$;
COMMENT ON FUNCTION ml.status_backlog() IS
    'status_backlog(): each derived column with its rows pending, in flight and retrying, the oldest wait and '
    'its per-row errors.';

-- Per-row failures grouped by column, newest first, with the latest message.
CREATE OR REPLACE FUNCTION ml.status_errors(max_rows int DEFAULT 20)
RETURNS TABLE (table_name text, column_name text, model text, errors bigint, last_error text, last_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT e.table_name, e.column_name, e.model, count(*),
           (array_agg(e.error ORDER BY e.at DESC, e.id DESC))[1], max(e.at)
    FROM ml.errors e
    GROUP BY e.table_name, e.column_name, e.model
    ORDER BY max(e.at) DESC
    LIMIT max_rows
$$;
COMMENT ON FUNCTION ml.status_errors(integer) IS
    'status_errors(max_rows DEFAULT 20): per-row failures grouped by column, newest first, with the latest '
    'message (the rows themselves: ml.errors).';
