-- Training and evaluation from SQL queries (ThanoSQL's BUILD MODEL): ml.build_model,
-- ml.evaluate_retrieval, ml.evaluate_vqa, and the worker's ml.register_trained.

-- Checks options against the kind's defaults; returns the defaults merged with the options.
CREATE OR REPLACE FUNCTION ml._train_options(kind text, options jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml AS $$
DECLARE
    defaults jsonb := (SELECT k.train_options FROM ml.model_kinds k WHERE k.kind = _train_options.kind);
    key text;
    val jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ml.model_kinds k WHERE k.kind = _train_options.kind) THEN
        RAISE EXCEPTION 'pgsight: unknown model kind %', coalesce(quote_literal(kind), 'NULL');
    ELSIF defaults IS NULL THEN
        RAISE EXCEPTION 'pgsight: models of kind % are not trained; register one with ml.load_model', kind;
    END IF;
    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: options must be a JSON object, got %', coalesce(options::text, 'NULL');
    END IF;
    FOR key, val IN SELECT * FROM jsonb_each(options) LOOP
        IF NOT defaults ? key THEN
            RAISE EXCEPTION 'pgsight: unknown option % for kind %', quote_literal(key), kind
                USING HINT = 'options of ' || kind || ': ' || (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(defaults) k);
        END IF;
        IF jsonb_typeof(defaults->key) IN ('number', 'boolean') AND jsonb_typeof(val) NOT IN (jsonb_typeof(defaults->key), 'null') THEN
            RAISE EXCEPTION 'pgsight: option % must be a %, got %', key, jsonb_typeof(defaults->key), val;
        END IF;
        IF key IN ('batch_size', 'max_epochs') AND (jsonb_typeof(val) <> 'number' OR val::numeric < 1 OR val::numeric <> trunc(val::numeric)) THEN
            RAISE EXCEPTION 'pgsight: option % must be a positive integer, got %', key, val;
        END IF;
        PERFORM ml._check_option(key, val);  -- its valid range (udf/options.sql)
    END LOOP;
    RETURN defaults || options;
END $$;

-- The columns a query returns, without running it. Not pinned to a search_path on purpose: the
-- user's query resolves its names the way the caller's session does (every name here is qualified).
CREATE OR REPLACE FUNCTION ml._query_columns(query text) RETURNS text[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    view_name text := 'pgsight_query_' || pg_catalog.pg_backend_pid();
    cols text[];
BEGIN
    IF query IS NULL OR pg_catalog.btrim(query) = '' THEN
        RAISE EXCEPTION 'pgsight: the query is empty';
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('CREATE TEMP VIEW %I AS SELECT * FROM (%s) AS q', view_name, query);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgsight: the query does not run: %', SQLERRM USING HINT = 'query: ' || query;
    END;
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) INTO cols FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = pg_catalog.format('pg_temp.%I', view_name)::pg_catalog.regclass AND a.attnum > 0;
    EXECUTE pg_catalog.format('DROP VIEW pg_temp.%I', view_name);
    RETURN cols;
END $$;

-- Insert a job, in the caller's transaction (`alone` is ignored: kept for the signature).
CREATE OR REPLACE FUNCTION ml._submit_job(kind text, model text, params jsonb, alone boolean) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    jid bigint;
BEGIN
    INSERT INTO ml.jobs (kind, model, params) VALUES (kind, model, params) RETURNING id INTO jid;
    PERFORM pg_notify('ml_work', 'job');
    RETURN jid;
END $$;

-- Takes the caller's search_path (no SET clause): the query's names resolve as in the caller's
-- session, here and in the worker (which runs it with the search_path recorded in the job).
CREATE OR REPLACE FUNCTION ml.build_model(name text, kind text, query text, options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    opts jsonb;
    cols text[];
    key text;
BEGIN
    PERFORM ml._check_name('model', name);
    opts := ml._train_options(kind, coalesce(options, '{}'));
    IF EXISTS (SELECT 1 FROM ml.models m WHERE m.name = build_model.name) AND NOT (opts->>'overwrite')::boolean THEN
        RAISE EXCEPTION 'pgsight: model % already exists', pg_catalog.quote_literal(name)
            USING HINT = 'pass "overwrite": true in the options to train it again';
    END IF;
    IF EXISTS (SELECT 1 FROM ml.jobs j WHERE j.kind = 'train' AND j.model = build_model.name
               AND j.status IN ('queued', 'running')) THEN
        RAISE EXCEPTION 'pgsight: model % is being trained already', pg_catalog.quote_literal(name)
            USING HINT = 'see ml.jobs; ml.cancel(job_id) stops it';
    END IF;
    IF opts ? 'base' AND opts->>'base' IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ml.models m WHERE m.name = opts->>'base')
       AND (opts->>'base') ~ '^[A-Za-z_][A-Za-z0-9_]*$' AND (opts->>'base') !~ '/' THEN
        -- a bare word that is no registered model and no hub id (owner/name) or path
        RAISE EXCEPTION 'pgsight: base % is neither a registered model nor a hub id or directory', opts->>'base';
    END IF;
    cols := ml._query_columns(query);
    -- the worker runs the query with its own role: check now that the caller may read all of it
    EXECUTE 'SELECT FROM (' || query || ') AS q LIMIT 0';
    FOR key IN SELECT k FROM pg_catalog.jsonb_object_keys(opts) k WHERE k LIKE '%\_col' LOOP
        IF opts->>key IS NOT NULL AND NOT (opts->>key) = ANY (cols) THEN
            RAISE EXCEPTION 'pgsight: option % names column %, which the query does not return', key,
                pg_catalog.quote_literal(opts->>key)
                USING HINT = 'the query returns: ' || pg_catalog.array_to_string(cols, ', ');
        END IF;
    END LOOP;
    RETURN ml._submit_job('train', name, pg_catalog.jsonb_build_object('kind', kind, 'query', query, 'options', opts,
                                                               'search_path', pg_catalog.current_setting('search_path')),
                          false);
END $$;

-- Worker: a training job finished; its weights were written under ml.blobs 'job/<id>/model/'.
CREATE OR REPLACE FUNCTION ml.register_trained(job_id bigint, dim int, info jsonb) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    j ml.jobs := (SELECT j FROM ml.jobs j WHERE id = job_id);
    v int;
    existed boolean;
BEGIN
    existed := EXISTS (SELECT 1 FROM ml.models WHERE name = j.model);
    INSERT INTO ml.models AS m (name, kind, source, status, dim, metric, options, info, stored)
    VALUES (j.model, j.params->>'kind', NULL, 'ready', dim,
            (SELECT metric FROM ml.model_kinds k WHERE k.kind = j.params->>'kind'),
            j.params->'options', coalesce(info, '{}'), true)
    ON CONFLICT ON CONSTRAINT models_pkey DO UPDATE
        SET kind = EXCLUDED.kind, source = NULL, status = 'ready', dim = EXCLUDED.dim, metric = EXCLUDED.metric,
            options = EXCLUDED.options, info = EXCLUDED.info, stored = true, version = m.version + 1,
            updated_at = now()
    RETURNING version INTO v;
    UPDATE ml.blobs SET key = format('model/%s/%s/', j.model, v) || substr(key, length(format('job/%s/model/', job_id)) + 1)
    WHERE starts_with(key, format('job/%s/model/', job_id));
    IF existed THEN
        PERFORM ml._model_replaced(j.model);
    END IF;
    RETURN v;
END $$;

CREATE OR REPLACE FUNCTION ml._job_result(jid bigint, OUT result jsonb, OUT error text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, ml AS $$
    SELECT r.result::jsonb, r.error
    FROM dblink(ml._loopback(), format('SELECT result::text, error FROM ml.jobs WHERE id = %s', jid))
         AS r(result text, error text)
$$;

-- Run an evaluation job and wait for its result (the worker computes; the result is JSON).
CREATE OR REPLACE FUNCTION ml._evaluate(what text, model_name text, query text, options jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$  -- the caller's search_path, as ml.build_model
DECLARE
    jid bigint;
    st text;
    res jsonb;
    err text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ml.models m WHERE m.name = model_name) THEN
        RAISE EXCEPTION 'pgsight: no model named %', pg_catalog.quote_literal(model_name);
    END IF;
    IF options IS NULL OR pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: options must be a JSON object, got %', options::text;
    END IF;
    PERFORM ml._query_columns(query);
    EXECUTE 'SELECT FROM (' || query || ') AS q LIMIT 0';  -- the caller may read all of it
    -- The job is committed on its own (a worker must see it while we wait), whatever transaction the
    -- caller is in: statement_timestamp() cannot tell, it differs from transaction_timestamp() under
    -- the extended query protocol (every parameterised psycopg/SQLAlchemy call) even in autocommit.
    jid := ml._autonomous(pg_catalog.format(
        'WITH j AS (INSERT INTO ml.jobs (kind, model, params) VALUES (%L, %L, %L::jsonb) RETURNING id) '
        'SELECT j.id::text FROM j, LATERAL (SELECT pg_catalog.pg_notify(%L, %L)) n',
        'evaluate', model_name, pg_catalog.jsonb_build_object('what', what, 'query', query, 'options', options,
                                                              'search_path', pg_catalog.current_setting('search_path')),
        'ml_work', 'job'))::bigint;
    st := ml.wait(jid, coalesce(nullif(options->>'timeout', '')::interval, interval '1 hour'));
    SELECT r.result, r.error INTO res, err
    FROM ml._job_result(jid) r;
    IF st <> 'done' THEN
        RAISE EXCEPTION 'pgsight: evaluation job % %: %', jid, st, coalesce(err, '');
    END IF;
    RETURN res;
END $$;

CREATE OR REPLACE FUNCTION ml.evaluate_retrieval(model text, query text, options jsonb DEFAULT '{}')
RETURNS TABLE (direction text, k int, recall real)
LANGUAGE sql VOLATILE AS $$
    SELECT r->>'direction', (r->>'k')::int, (r->>'recall')::real
    FROM jsonb_array_elements(ml._evaluate('retrieval', model, query, options)->'rows') AS r
$$;

CREATE OR REPLACE FUNCTION ml.evaluate_vqa(model text, query text, options jsonb DEFAULT '{}')
RETURNS TABLE (question text, n int, vqa_accuracy real, exact_match real)
LANGUAGE sql VOLATILE AS $$
    SELECT r->>'question', (r->>'n')::int, (r->>'vqa_accuracy')::real, (r->>'exact_match')::real
    FROM jsonb_array_elements(ml._evaluate('vqa', model, query, options)->'rows') AS r
$$;
