-- The trust boundary (docs/security.md). Users have no write privileges on ml tables: the ml
-- functions they call write through the SECURITY DEFINER helpers below. Each pins search_path,
-- validates every argument, and acts for `who` (the caller's current_user, passed by the
-- function that calls it) only when the session's login role may be `who`. tests/faults/
-- test_security.py lists every SECURITY DEFINER function of ml: add one there after review.

-- `who`, when this session may act for it (its login role is a member of `who`); raises otherwise.
-- `loopback_ok`: the configured loopback role may act for others (it submits a user's evaluation).
CREATE OR REPLACE FUNCTION ml_internal._acting(who name, loopback_ok boolean DEFAULT false) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    IF who IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = who) THEN
        RAISE EXCEPTION 'pgsight: no role %', coalesce(quote_literal(who), 'NULL') USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF pg_has_role(session_user, who, 'MEMBER') THEN
        RETURN who;
    END IF;
    IF loopback_ok AND session_user = (SELECT nullif(l.role, '') FROM ml.loopback l) THEN
        RETURN who;
    END IF;
    RAISE EXCEPTION 'pgsight: % may not act for %', session_user, who USING ERRCODE = 'insufficient_privilege';
END $$;

-- May `who` change a row that belongs to `owner`? Its owner (or a member of it), pgsight_admin, a
-- worker, or a superuser. A row without owner (made before ownership existed) only the last three.
CREATE OR REPLACE FUNCTION ml_private._may_change(who name, owner name) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    r text;
BEGIN
    IF who IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = who) THEN
        RETURN false;
    END IF;
    IF who = owner OR (SELECT x.rolsuper FROM pg_roles x WHERE x.rolname = who) THEN
        RETURN true;
    END IF;
    IF owner IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = owner)
       AND pg_has_role(who, owner, 'USAGE') THEN
        RETURN true;
    END IF;
    FOREACH r IN ARRAY ARRAY['pgsight_admin', 'pgsight_worker'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = r) AND pg_has_role(who, r, 'USAGE') THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END $$;

-- The name of a job's snapshot table: the rows its query returned at submission.
CREATE OR REPLACE FUNCTION ml_private._snapshot_name(job_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'snapshot_' || job_id
$$;

-- A training or evaluation job and its (empty) snapshot table, owned by pgsight. The caller fills
-- it with its own rights: with `rows` (JSON objects, column name -> value) here, or else with an
-- INSERT of its own, allowed to `who` on this one table until ml_private._snapshot_seal. Column types are
-- built-in types only (others were cast to text by the caller): nothing user-defined runs when the
-- worker reads the snapshot.
CREATE OR REPLACE FUNCTION ml_private._job_submit(who name, kind text, model text, params jsonb, col_names text[],
                                          col_types regtype[], rows jsonb DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    jid bigint;
    snap text;
    cols text;
    n bigint;
BEGIN
    PERFORM ml_internal._acting(who, kind = 'evaluate' AND rows IS NOT NULL);
    IF kind IS NULL OR kind NOT IN ('train', 'evaluate') THEN
        RAISE EXCEPTION 'pgsight: unknown job kind %', coalesce(quote_literal(kind), 'NULL');
    END IF;
    PERFORM ml_private._check_name('model', model);
    IF params IS NULL OR jsonb_typeof(params) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: job params must be a JSON object';
    END IF;
    IF kind = 'train' THEN  -- the checks of ml.build_model, again: this function may be called directly
        PERFORM ml_private._train_options(params->>'kind', coalesce(params->'options', '{}'));
        IF EXISTS (SELECT 1 FROM ml.models m WHERE m.name = model) THEN
            PERFORM ml_private._check_model_change(who, (SELECT m FROM ml.models m WHERE m.name = model));
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM ml.models m WHERE m.name = model) THEN
        RAISE EXCEPTION 'pgsight: no model named %', quote_literal(model);
    END IF;
    IF rows IS NOT NULL AND jsonb_typeof(rows) <> 'array' THEN
        RAISE EXCEPTION 'pgsight: snapshot rows must be a JSON array';
    END IF;
    IF col_names IS NULL OR cardinality(col_names) NOT BETWEEN 1 AND 1000
       OR cardinality(col_names) <> cardinality(col_types) OR array_position(col_types, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgsight: a snapshot needs 1 to 1000 named, typed columns';
    END IF;
    SELECT string_agg(format('%I %s', c.name,
                             CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace AND t.typtype IN ('b', 'e', 'r', 'm')
                                  THEN c.typ::text ELSE 'text' END), ', ' ORDER BY c.i)
    INTO cols
    FROM unnest(col_names, col_types) WITH ORDINALITY AS c(name, typ, i) JOIN pg_type t ON t.oid = c.typ;

    INSERT INTO ml.jobs (kind, model, params, owner) VALUES (kind, model, params, who) RETURNING id INTO jid;
    snap := ml_private._snapshot_name(jid);
    EXECUTE format('CREATE TABLE ml.%I (%s)', snap, cols);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_worker') THEN
        EXECUTE format('GRANT SELECT ON ml.%I TO pgsight_worker', snap);
    END IF;
    IF rows IS NULL THEN
        IF who <> current_user THEN
            EXECUTE format('GRANT INSERT ON ml.%I TO %I', snap, who);
        END IF;
    ELSE
        EXECUTE format('INSERT INTO ml.%I SELECT * FROM jsonb_populate_recordset(NULL::ml.%I, $1)', snap, snap)
        USING rows;
        GET DIAGNOSTICS n = ROW_COUNT;
        UPDATE ml.jobs j SET params = j.params || jsonb_build_object('rows', n) WHERE j.id = jid;
        PERFORM pg_notify('ml_work', 'job');
    END IF;
    RETURN jid;
END $$;

-- The caller filled its job's snapshot: take back its INSERT, count the rows, wake a worker.
CREATE OR REPLACE FUNCTION ml_private._snapshot_seal(job_id bigint, who name) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    j ml.jobs := (SELECT j FROM ml.jobs j WHERE j.id = job_id);
    snap text := ml_private._snapshot_name(job_id);
    n bigint;
BEGIN
    PERFORM ml_internal._acting(who);
    IF j.id IS NULL OR j.owner IS DISTINCT FROM who OR j.status <> 'queued' OR to_regclass('ml.' || quote_ident(snap)) IS NULL THEN
        RAISE EXCEPTION 'pgsight: no queued job % of % with a snapshot', job_id, who USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF who <> current_user THEN
        EXECUTE format('REVOKE ALL ON ml.%I FROM %I', snap, who);
    END IF;
    EXECUTE format('SELECT count(*) FROM ml.%I', snap) INTO n;
    UPDATE ml.jobs x SET params = x.params || jsonb_build_object('rows', n) WHERE x.id = job_id;
    PERFORM pg_notify('ml_work', 'job');
    RETURN n;
END $$;

-- Drop the snapshot of a job that is over (the worker calls it when the job ends). Anyone may: it
-- only frees what no one will read again. Does not wait for a reader's lock.
CREATE OR REPLACE FUNCTION ml_internal._snapshot_drop(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    snap text := ml_private._snapshot_name(job_id);
BEGIN
    IF to_regclass('ml.' || quote_ident(snap)) IS NULL
       OR EXISTS (SELECT 1 FROM ml.jobs j WHERE j.id = job_id AND j.status IN ('queued', 'running')) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE ml.%I', snap);
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RAISE NOTICE 'pgsight: snapshot of job % is in use; left for later', job_id;
    RETURN false;
END $$;

-- ml.cancel: a job of the caller's (or any, for pgsight_admin). A queued job's snapshot goes at once;
-- a running one's when its worker notices.
CREATE OR REPLACE FUNCTION ml_private._job_cancel(job_id bigint, who name) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    j ml.jobs := (SELECT j FROM ml.jobs j WHERE j.id = job_id FOR UPDATE);
BEGIN
    PERFORM ml_internal._acting(who);
    IF j.id IS NULL OR NOT ml_private._may_change(who, j.owner) THEN
        RAISE EXCEPTION 'pgsight: no job %', job_id;  -- another role's job is not there for you
    END IF;
    IF j.status NOT IN ('queued', 'running') THEN
        RETURN j.status;  -- already over
    END IF;
    UPDATE ml.jobs x SET status = 'cancelled', finished_at = now() WHERE x.id = job_id;
    DELETE FROM ml.queue q WHERE q.job_id = _job_cancel.job_id;
    IF j.status = 'queued' THEN
        PERFORM ml_internal._snapshot_drop(job_id);
    END IF;
    RETURN 'cancelled';
END $$;

-- Record a derived column the caller has just added to its own table.
CREATE OR REPLACE FUNCTION ml_private._task_add(who name, tbl regclass, task_kind text, model_name text, source_col text,
                                        result_col text, modality text, question text, key_col text, key_type text,
                                        index_name text) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    tid int;
BEGIN
    PERFORM ml_internal._acting(who);
    IF tbl IS NULL OR NOT pg_has_role(who, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'MEMBER') THEN
        RAISE EXCEPTION 'pgsight: % does not own table %', who, tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM ml_private._check_name('result column', result_col);
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = result_col AND NOT a.attisdropped)
       OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = source_col AND NOT a.attisdropped)
       OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = key_col AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'pgsight: table % lacks the columns of this task', tbl;
    END IF;
    IF to_regtype(key_type) IS NULL THEN
        RAISE EXCEPTION 'pgsight: unknown key type %', quote_literal(key_type);
    END IF;
    INSERT INTO ml.tasks (table_name, kind, model, source_col, result_col, modality, question, key_col, key_type,
                          index_name, owner, key_attnum, source_attnum, result_attnum)
    VALUES (tbl, task_kind, model_name, source_col, result_col, modality, question, key_col,
            format_type(to_regtype(key_type), NULL), index_name, who,
            (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = key_col),
            (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = source_col),
            (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = result_col))
    RETURNING id INTO tid;
    RETURN tid;
END $$;

CREATE OR REPLACE FUNCTION ml_private._task_index_state(tid int, who name, state text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    PERFORM ml_internal._acting(who);
    IF NOT ml_private._may_change(who, (SELECT t.owner FROM ml.tasks t WHERE t.id = tid)) THEN
        RAISE EXCEPTION 'pgsight: no task % of %', tid, who USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE ml.tasks t SET index_state = _task_index_state.state WHERE t.id = tid;  -- (ml.tasks has a column state too)
END $$;

-- Queue the given keys of a task's table in a new backfill job (the caller read them with its own
-- rights); the task records the model version it is computed with. Returns the job id.
CREATE OR REPLACE FUNCTION ml_private._backfill_job(tid int, who name, keys text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    t ml.tasks := (SELECT t FROM ml.tasks t WHERE t.id = tid);
    v int := (SELECT m.version FROM ml.models m WHERE m.name = t.model);
    jid bigint;
    n bigint := coalesce(cardinality(keys), 0);
BEGIN
    PERFORM ml_internal._acting(who);
    IF t.id IS NULL OR NOT ml_private._may_change(who, t.owner) THEN
        RAISE EXCEPTION 'pgsight: no task % of %', tid, who USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE ml.tasks x SET model_version = v WHERE x.id = tid;
    INSERT INTO ml.jobs (kind, model, table_name, task_id, params, owner, total, status, finished_at)
    VALUES ('backfill', t.model, t.table_name::text, t.id,
            jsonb_build_object('column', t.result_col, 'source_col', t.source_col, 'model_version', v), t.owner,
            n, CASE WHEN n = 0 THEN 'done' ELSE 'queued' END, CASE WHEN n = 0 THEN now() END)
    RETURNING id INTO jid;
    IF n > 0 THEN
        INSERT INTO ml.queue (task_id, key, job_id) SELECT tid, k, jid FROM unnest(keys) AS k;
        PERFORM pg_notify('ml_work', tid::text);
    END IF;
    RETURN jid;
END $$;

-- Forget the tasks (NULL: all) whose table or result column is gone: their queue rows, open jobs
-- and the task itself. Anyone may: a task without its column is nothing to keep.
CREATE OR REPLACE FUNCTION ml_private._tasks_forget(tids int[]) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    gone int[];
BEGIN
    SELECT array_agg(t.id) INTO gone FROM ml.tasks t
    WHERE (tids IS NULL OR t.id = ANY (tids))
      AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.table_name::oid AND NOT a.attisdropped
                      AND (a.attname = t.result_col OR a.attnum = t.result_attnum));
    IF gone IS NULL THEN
        RETURN 0;
    END IF;
    -- rows a worker holds are skipped, never waited for (no deadlock with ml_internal.claim); ml_internal.reap removes them
    DELETE FROM ml.queue WHERE id IN (SELECT q.id FROM ml.queue q WHERE q.task_id = ANY (gone) FOR UPDATE SKIP LOCKED);
    UPDATE ml.jobs j SET status = 'cancelled', error = 'table or column dropped', finished_at = now()
    WHERE j.task_id = ANY (gone) AND j.status IN ('queued', 'running');
    DELETE FROM ml.tasks t WHERE t.id = ANY (gone);
    RETURN cardinality(gone);
END $$;

-- Register or replace a model (ml.load_model). A model is replaced only by its owner or an admin, and
-- not while other roles' columns use it. Returns true when it replaced one (its old files are gone).
CREATE OR REPLACE FUNCTION ml_private._model_put(who name, model_name text, model_kind text, source text, dim int,
                                         options jsonb, info jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    old ml.models := (SELECT m FROM ml.models m WHERE m.name = model_name FOR UPDATE);
    v int;
BEGIN
    PERFORM ml_internal._acting(who);
    PERFORM ml_private._check_name('model', model_name);
    IF old.name IS NOT NULL THEN
        PERFORM ml_private._check_model_change(who, old);
    END IF;
    INSERT INTO ml.models AS m (name, kind, source, status, dim, metric, options, info, stored, owner)
    VALUES (model_name, model_kind, source, 'ready', dim, (SELECT k.metric FROM ml.model_kinds k WHERE k.kind = model_kind),
            coalesce(options, '{}'), coalesce(info, '{}'), false, who)
    ON CONFLICT ON CONSTRAINT models_pkey DO UPDATE
        SET kind = EXCLUDED.kind, source = EXCLUDED.source, status = 'ready', dim = EXCLUDED.dim,
            metric = EXCLUDED.metric, options = EXCLUDED.options, info = EXCLUDED.info,
            stored = false, version = m.version + 1, updated_at = now()
    RETURNING m.version INTO v;
    DELETE FROM ml.blobs b WHERE starts_with(b.key, 'model/' || model_name || '/')
        AND NOT starts_with(b.key, format('model/%s/%s/', model_name, v));
    RETURN old.name IS NOT NULL;
END $$;

-- Raises unless `who` may replace or drop model `m`: its owner or an admin, and no other role's
-- column uses it.
CREATE OR REPLACE FUNCTION ml_private._check_model_change(who name, m ml.models) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    others text;
BEGIN
    IF NOT ml_private._may_change(who, m.owner) THEN
        RAISE EXCEPTION 'pgsight: model % belongs to %; only its owner or pgsight_admin may replace or drop it',
            quote_literal(m.name), coalesce(m.owner::text, 'the administrator') USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT string_agg(DISTINCT t.owner::text, ', ') INTO others FROM ml.tasks t
    WHERE t.model = m.name AND t.owner IS DISTINCT FROM who;
    IF others IS NOT NULL AND NOT ml_private._may_change(who, NULL) THEN
        RAISE EXCEPTION 'pgsight: model % is used by columns of other roles (%)', quote_literal(m.name), others
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

-- ml.drop_model: the owner (or an admin) drops a model no column uses.
CREATE OR REPLACE FUNCTION ml_private._model_drop(who name, model_name text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models := (SELECT m FROM ml.models m WHERE m.name = model_name FOR UPDATE);
    users text;
BEGIN
    PERFORM ml_internal._acting(who);
    IF m.name IS NULL THEN
        RAISE EXCEPTION 'pgsight: no model named %', coalesce(quote_literal(model_name), 'NULL');
    END IF;
    PERFORM ml_private._check_model_change(who, m);
    SELECT string_agg(format('%s.%I', t.table_name, t.result_col), ', ') INTO users
    FROM ml.tasks t WHERE t.model = model_name;
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'pgsight: model % is used by %', quote_literal(model_name), users
            USING HINT = 'drop those columns first with ml.drop_embedding / ml.drop_prediction';
    END IF;
    DELETE FROM ml.blobs b WHERE starts_with(b.key, 'model/' || model_name || '/');
    DELETE FROM ml.models x WHERE x.name = model_name;
END $$;

-- The trigger function that gives each ml.errors row its owner lives in a run-once file (0003): its
-- search_path gets pg_temp last, like every function here (a session's temporary schema is otherwise
-- searched first for relations and types).
DO $$
BEGIN
    IF to_regprocedure('ml_private._error_owner()') IS NOT NULL THEN
        ALTER FUNCTION ml_private._error_owner() SET search_path = pg_catalog, ml, pg_temp;
    END IF;
END $$;
