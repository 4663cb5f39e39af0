-- Training and evaluation from SQL queries (ThanoSQL's BUILD MODEL): ml.build_model,
-- ml.evaluate_retrieval, ml.evaluate_vqa, and the worker's ml_internal.register_trained.

-- Checks options against the kind's defaults; returns the defaults merged with the options.
CREATE OR REPLACE FUNCTION ml_private._train_options(kind text, options jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
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
        PERFORM ml_private._check_option(key, val);  -- its valid range (udf/options.sql)
    END LOOP;
    RETURN defaults || options;
END $$;

-- The columns of a query and their types (user-defined and domain types become text, so that a
-- snapshot holds built-in types only), without running it.
CREATE OR REPLACE FUNCTION ml_private._query_shape(query text, OUT name text, OUT typ pg_catalog.regtype)
RETURNS SETOF record LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    view_name text := 'pgsight_query_' || pg_catalog.pg_backend_pid();
BEGIN
    IF query IS NULL OR pg_catalog.btrim(query) = '' THEN
        RAISE EXCEPTION 'pgsight: the query is empty';
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('CREATE TEMP VIEW %I AS SELECT * FROM (%s) AS q', view_name, query);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgsight: the query does not run: %', SQLERRM USING HINT = 'query: ' || query;
    END;
    RETURN QUERY
        SELECT a.attname::text,
               CASE WHEN t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND t.typtype OPERATOR(pg_catalog.=) ANY ('{b,e,r,m}'::"char"[])
                    THEN a.atttypid::pg_catalog.regtype ELSE 'pg_catalog.text'::pg_catalog.regtype END
        FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
        WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.format('pg_temp.%I', view_name)::pg_catalog.regclass
          AND a.attnum OPERATOR(pg_catalog.>) 0
        ORDER BY a.attnum;
    EXECUTE pg_catalog.format('DROP VIEW pg_temp.%I', view_name);
END $$;

-- The columns a query returns, without running it. Not pinned to a search_path on purpose: the
-- user's query resolves its names the way the caller's session does (every name here is qualified).
CREATE OR REPLACE FUNCTION ml_internal._query_columns(query text) RETURNS text[]
LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.array_agg(c.name ORDER BY c.i) FROM ml_private._query_shape(query) WITH ORDINALITY AS c(name, typ, i)
$$;

-- The SELECT list that casts a query's columns to their snapshot types.
CREATE OR REPLACE FUNCTION ml_private._snapshot_select(names text[], types pg_catalog.regtype[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(format('q.%I::%s', c.name, c.typ), ', ' ORDER BY c.i)
    FROM unnest(names, types) WITH ORDINALITY AS c(name, typ, i)
$$;

-- Takes the caller's search_path (no SET clause): the query's names resolve as in the caller's
-- session. The query runs here, once, in the caller's transaction and with the caller's rights: its
-- rows go into the job's snapshot (ml.snapshot_<job id>), which is all the worker reads. ROLLBACK
-- undoes the job; COMMIT, then ml.wait(job).
CREATE OR REPLACE FUNCTION ml.build_model(name text, kind text, query text, options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    opts jsonb;
    cols text[];
    types pg_catalog.regtype[];
    key text;
    jid bigint;
    existing ml.models;
BEGIN
    PERFORM ml_private._check_name('model', name);
    opts := ml_private._train_options(kind, coalesce(options, '{}'));
    SELECT * INTO existing FROM ml.models m WHERE m.name = build_model.name;
    IF existing.name IS NOT NULL AND NOT (opts->>'overwrite')::boolean THEN
        RAISE EXCEPTION 'pgsight: model % already exists', pg_catalog.quote_literal(name)
            USING HINT = 'pass "overwrite": true in the options to train it again';
    ELSIF existing.name IS NOT NULL THEN
        PERFORM ml_private._check_model_change(current_user, existing);
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
    SELECT pg_catalog.array_agg(s.name ORDER BY s.i), pg_catalog.array_agg(s.typ ORDER BY s.i) INTO cols, types
    FROM ml_private._query_shape(query) WITH ORDINALITY AS s(name, typ, i);
    FOR key IN SELECT k FROM pg_catalog.jsonb_object_keys(opts) k WHERE k LIKE '%\_col' LOOP
        IF opts->>key IS NOT NULL AND NOT (opts->>key) = ANY (cols) THEN
            RAISE EXCEPTION 'pgsight: option % names column %, which the query does not return', key,
                pg_catalog.quote_literal(opts->>key)
                USING HINT = 'the query returns: ' || pg_catalog.array_to_string(cols, ', ');
        END IF;
    END LOOP;
    jid := ml_private._job_submit(current_user, 'train', name,
                          pg_catalog.jsonb_build_object('kind', kind, 'query', query, 'options', opts), cols, types);
    EXECUTE pg_catalog.format('INSERT INTO ml.%I SELECT %s FROM (%s) AS q', ml_private._snapshot_name(jid),
                              ml_private._snapshot_select(cols, types), query);
    PERFORM ml_private._snapshot_seal(jid, current_user);
    RETURN jid;
END $$;
COMMENT ON FUNCTION ml.build_model(text, text, text, jsonb) IS
    'build_model(name, kind, query, options DEFAULT ''{}'') -> job id. Train a model of kind on the rows of '
    'query (run now, with the caller''s rights, into the job''s snapshot); a worker trains it and registers it '
    'as name. Options: see ml.model_kinds. COMMIT, then ml.wait(job).';

-- Worker: a training job finished; its weights were written under ml.blobs 'job/<id>/model/'.
CREATE OR REPLACE FUNCTION ml_internal.register_trained(job_id bigint, dim int, info jsonb) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    j ml.jobs := (SELECT j FROM ml.jobs j WHERE id = job_id);
    v int;
    existed boolean;
    old ml.models := (SELECT m FROM ml.models m WHERE m.name = j.model FOR UPDATE);
BEGIN
    existed := old.name IS NOT NULL;
    IF existed AND j.owner IS NOT NULL THEN  -- replaced since the job was submitted? the owner's rights count
        PERFORM ml_private._check_model_change(j.owner, old);
    END IF;
    INSERT INTO ml.models AS m (name, kind, source, status, dim, metric, options, info, stored, owner)
    VALUES (j.model, j.params->>'kind', NULL, 'ready', dim,
            (SELECT metric FROM ml.model_kinds k WHERE k.kind = j.params->>'kind'),
            j.params->'options', coalesce(info, '{}'), true, j.owner)
    ON CONFLICT ON CONSTRAINT models_pkey DO UPDATE
        SET kind = EXCLUDED.kind, source = NULL, status = 'ready', dim = EXCLUDED.dim, metric = EXCLUDED.metric,
            options = EXCLUDED.options, info = EXCLUDED.info, stored = true, version = m.version + 1,
            updated_at = now()
    RETURNING version INTO v;
    UPDATE ml.blobs SET key = format('model/%s/%s/', j.model, v) || substr(key, length(format('job/%s/model/', job_id)) + 1)
    WHERE starts_with(key, format('job/%s/model/', job_id));
    IF existed THEN
        PERFORM ml_private._model_replaced(j.model);
        DELETE FROM ml.blobs b WHERE starts_with(b.key, 'model/' || j.model || '/')
            AND NOT starts_with(b.key, format('model/%s/%s/', j.model, v));
    END IF;
    RETURN v;
END $$;

CREATE OR REPLACE FUNCTION ml_private._job_result(jid bigint, OUT result jsonb, OUT error text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT r.result::jsonb, r.error
    FROM (SELECT sha256(convert_to(gen_random_uuid()::text, 'UTF8')) AS h) t,
         public.dblink(ml_private._loopback(), format('SELECT result, error FROM ml_private._job_state(%s, %L, %L::bytea, %L)',
                                                      jid, current_user, t.h, ml_private._rpc_ticket(current_user, t.h)))
         AS r(result text, error text)
$$;

-- Run an evaluation job and wait for its result (the worker computes; the result is JSON). The query
-- runs here, with the caller's rights; its rows travel, as data, with the job that is committed
-- through the loopback connection (a worker must see it while we wait).
CREATE OR REPLACE FUNCTION ml_private._evaluate(what text, model_name text, query text, options jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$  -- the caller's search_path, as ml.build_model
DECLARE
    jid bigint;
    st text;
    res jsonb;
    err text;
    cols text[];
    types pg_catalog.regtype[];
    data jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ml.models m WHERE m.name = model_name) THEN
        RAISE EXCEPTION 'pgsight: no model named %', pg_catalog.quote_literal(model_name);
    END IF;
    IF options IS NULL OR pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: options must be a JSON object, got %', options::text;
    END IF;
    SELECT pg_catalog.array_agg(s.name ORDER BY s.i), pg_catalog.array_agg(s.typ ORDER BY s.i) INTO cols, types
    FROM ml_private._query_shape(query) WITH ORDINALITY AS s(name, typ, i);
    EXECUTE pg_catalog.format('SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(s)), ''[]'') '
                              'FROM (SELECT %s FROM (%s) AS q) AS s', ml_private._snapshot_select(cols, types), query)
    INTO data;
    jid := ml_private._autonomous(pg_catalog.format('SELECT ml_private._job_submit(%L, %L, %L, %L::jsonb, %L::text[], %L::regtype[], %L::jsonb)',
        current_user, 'evaluate', model_name,
        pg_catalog.jsonb_build_object('what', what, 'query', query, 'options', options), cols, types, data))::bigint;
    st := ml.wait(jid, coalesce(nullif(options->>'timeout', '')::interval, interval '1 hour'));
    SELECT r.result, r.error INTO res, err
    FROM ml_private._job_result(jid) r;
    IF st <> 'done' THEN
        RAISE EXCEPTION 'pgsight: evaluation job % %: %', jid, st, coalesce(err, '');
    END IF;
    RETURN res;
END $$;

CREATE OR REPLACE FUNCTION ml.evaluate_retrieval(model text, query text, options jsonb DEFAULT '{}')
RETURNS TABLE (direction text, k int, recall real)
LANGUAGE sql VOLATILE AS $$
    SELECT r->>'direction', (r->>'k')::int, (r->>'recall')::real
    FROM jsonb_array_elements(ml_private._evaluate('retrieval', model, query, options)->'rows') AS r
$$;
COMMENT ON FUNCTION ml.evaluate_retrieval(text, text, jsonb) IS
    'evaluate_retrieval(model, query, options DEFAULT ''{}'') -> (direction, k, recall): image-to-text and '
    'text-to-image recall@k of model on the (image, caption) rows of query. Waits for the worker.';

CREATE OR REPLACE FUNCTION ml.evaluate_vqa(model text, query text, options jsonb DEFAULT '{}')
RETURNS TABLE (question text, n int, vqa_accuracy real, exact_match real)
LANGUAGE sql VOLATILE AS $$
    SELECT r->>'question', (r->>'n')::int, (r->>'vqa_accuracy')::real, (r->>'exact_match')::real
    FROM jsonb_array_elements(ml_private._evaluate('vqa', model, query, options)->'rows') AS r
$$;
COMMENT ON FUNCTION ml.evaluate_vqa(text, text, jsonb) IS
    'evaluate_vqa(model, query, options DEFAULT ''{}'') -> (question, n, vqa_accuracy, exact_match) per '
    'question and overall, on the (image, question, answers) rows of query. Waits for the worker.';
