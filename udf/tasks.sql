-- Derived columns of user tables (ThanoSQL's CONVERT and PREDICT): ml.create_embedding,
-- ml.create_prediction and their drop_* functions, the triggers that keep them in sync and backfills.

-- Everything about a new task is checked here, in the caller's session, before anything changes.
CREATE OR REPLACE FUNCTION ml._check_task(task_kind text, tbl regclass, model_name text, source_col text,
                                          result_col text, modality text, question text)
RETURNS TABLE (key_col text, key_type text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml AS $$
DECLARE
    m ml.models;
    k ml.model_kinds;
    src_type text;
    pk_cols text[];
    pk_types text[];
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pgsight: table_name is NULL';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pgsight: % is not a table', tbl;
    END IF;
    SELECT * INTO m FROM ml.models WHERE name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: no model named %', coalesce(quote_literal(model_name), 'NULL')
            USING HINT = 'register it first: SELECT ml.load_model(name, kind, source)';
    END IF;
    IF m.status <> 'ready' THEN
        RAISE EXCEPTION 'pgsight: model % is %, not ready', quote_literal(model_name), m.status;
    END IF;
    SELECT * INTO k FROM ml.model_kinds WHERE kind = m.kind;
    IF task_kind = 'embedding' AND k.outputs <> 'embedding' THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) answers questions and makes no embeddings', model_name, m.kind
            USING HINT = 'use ml.create_prediction';
    ELSIF task_kind = 'prediction' AND k.outputs <> 'answer' THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) makes embeddings and answers no questions', model_name, m.kind
            USING HINT = 'use ml.create_embedding';
    END IF;
    IF modality IS NULL OR NOT modality = ANY (k.modalities) OR (task_kind = 'prediction' AND modality <> 'image') THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) cannot embed modality %', model_name, m.kind,
            coalesce(quote_literal(modality), 'NULL')
            USING HINT = 'its modalities: ' || array_to_string(k.modalities, ', ');
    END IF;
    IF task_kind = 'embedding' AND m.dim IS NULL THEN
        RAISE EXCEPTION 'pgsight: model % has no known dimension', model_name;
    END IF;
    IF task_kind = 'prediction' AND (question IS NULL OR btrim(question) = '') THEN
        RAISE EXCEPTION 'pgsight: the question is empty';
    END IF;

    PERFORM ml._check_name('result column', result_col);
    IF task_kind = 'prediction' AND length(result_col) > 57 THEN
        RAISE EXCEPTION 'pgsight: result column name % is too long (57 characters at most, %_score must fit)',
            result_col, result_col;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped
               AND attname IN (result_col, CASE WHEN task_kind = 'prediction' THEN result_col || '_score' END)) THEN
        RAISE EXCEPTION 'pgsight: table % already has a column %', tbl, quote_ident(result_col)
            USING HINT = 'choose another result_col, or drop the old one (ml.drop_embedding / ml.drop_prediction)';
    END IF;

    SELECT format_type(atttypid, NULL) INTO src_type FROM pg_attribute
    WHERE attrelid = tbl AND attname = source_col AND attnum > 0 AND NOT attisdropped;
    IF src_type IS NULL THEN
        RAISE EXCEPTION 'pgsight: table % has no column %', tbl, coalesce(quote_literal(source_col), 'NULL');
    END IF;
    IF modality = 'image' AND src_type NOT IN ('text', 'character varying', 'bytea') THEN
        RAISE EXCEPTION 'pgsight: image column %.% is %, expected text (a path or URL) or bytea', tbl, source_col, src_type;
    ELSIF modality = 'text' AND src_type NOT IN ('text', 'character varying') THEN
        RAISE EXCEPTION 'pgsight: text column %.% is %, expected text', tbl, source_col, src_type;
    END IF;

    SELECT array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
    INTO pk_cols, pk_types
    FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF pk_cols IS NULL THEN
        RAISE EXCEPTION 'pgsight: table % has no primary key', tbl
            USING HINT = 'pgsight writes results back by primary key: ALTER TABLE ... ADD PRIMARY KEY (...)';
    ELSIF cardinality(pk_cols) > 1 THEN
        RAISE EXCEPTION 'pgsight: table % has a primary key of % columns; pgsight needs a single-column key', tbl,
            cardinality(pk_cols) USING HINT = 'add a surrogate key: ALTER TABLE ... ADD COLUMN id bigserial';
    END IF;
    key_col := pk_cols[1];
    key_type := pk_types[1];
    RETURN NEXT;
END $$;

-- Create the task: column(s), index, triggers, backfill. Runs in whichever transaction calls it.
CREATE OR REPLACE FUNCTION ml._install_task(task_kind text, tbl regclass, model_name text, source_col text,
                                            result_col text, modality text, question text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    chk record;
    m ml.models := (SELECT m FROM ml.models m WHERE name = model_name);
    tid int;
    idx text;
    opclass text;
BEGIN
    SELECT * INTO chk FROM ml._check_task(task_kind, tbl, model_name, source_col, result_col, modality, question);
    IF task_kind = 'embedding' THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.vector(%s)', tbl, result_col, ml._vector_schema(), m.dim);
        IF m.dim <= 2000 THEN
            opclass := ml._vector_schema() || '.' ||
                CASE m.metric WHEN 'l2' THEN 'vector_l2_ops' WHEN 'ip' THEN 'vector_ip_ops' ELSE 'vector_cosine_ops' END;
            idx := left(format('%s_%s_hnsw', (SELECT relname FROM pg_class WHERE oid = tbl), result_col), 63);
            EXECUTE format('CREATE INDEX %I ON %s USING hnsw (%I %s)', idx, tbl, result_col, opclass);
        ELSE
            RAISE NOTICE 'pgsight: % dimensions is over HNSW''s limit of 2000; %.% gets no index', m.dim, tbl, result_col;
        END IF;
    ELSE
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I text, ADD COLUMN %I real', tbl, result_col, result_col || '_score');
    END IF;

    INSERT INTO ml.tasks (table_name, kind, model, source_col, result_col, modality, question, key_col, key_type, index_name)
    VALUES (tbl, task_kind, model_name, source_col, result_col, modality, question, chk.key_col, chk.key_type, idx)
    RETURNING id INTO tid;

    -- New rows: one statement-level trigger (a bulk INSERT queues its rows in one go).
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ml._on_insert(%s)', 'pgsight_' || tid || '_insert', tbl, tid);
    -- Changed sources only: UPDATEs of other columns (and the worker's write-back) never queue.
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %I ON %s FOR EACH ROW '
                   'WHEN (OLD.%I IS DISTINCT FROM NEW.%I) EXECUTE FUNCTION ml._on_update(%s, %L)',
                   'pgsight_' || tid || '_update', source_col, tbl, source_col, source_col, tid, chk.key_col);
    RETURN ml._backfill(tid);
END $$;

-- Queue every row of a task in a new backfill job; returns the job id.
CREATE OR REPLACE FUNCTION ml._backfill(tid int) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    t ml.tasks := (SELECT t FROM ml.tasks t WHERE id = tid);
    v int := (SELECT version FROM ml.models WHERE name = t.model);
    jid bigint;
    n bigint;
BEGIN
    -- the task records which model version its results come from; a re-registered model backfills again
    UPDATE ml.tasks SET model_version = v WHERE id = tid;
    INSERT INTO ml.jobs (kind, model, table_name, task_id, params)
    VALUES ('backfill', t.model, t.table_name::text, t.id,
            jsonb_build_object('column', t.result_col, 'source_col', t.source_col, 'model_version', v))
    RETURNING id INTO jid;
    EXECUTE format('INSERT INTO ml.queue (task_id, key, job_id) SELECT %s, %I::text, %s FROM %s WHERE %I IS NOT NULL',
                   tid, t.key_col, jid, t.table_name, t.source_col);
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE ml.jobs SET total = n,
        status = CASE WHEN n = 0 THEN 'done' ELSE status END,
        finished_at = CASE WHEN n = 0 THEN now() END
    WHERE id = jid;
    IF n > 0 THEN
        PERFORM pg_notify('ml_work', tid::text);
    END IF;
    RETURN jid;
END $$;

CREATE OR REPLACE FUNCTION ml._on_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, ml AS $$
DECLARE
    t ml.tasks := (SELECT t FROM ml.tasks t WHERE id = TG_ARGV[0]::int);
    n bigint;
BEGIN
    IF t.id IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('INSERT INTO ml.queue (task_id, key) SELECT %s, %I::text FROM new_rows WHERE %I IS NOT NULL',
                   t.id, t.key_col, t.source_col);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('ml_work', t.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ml._on_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, ml AS $$
DECLARE
    k text;
BEGIN
    EXECUTE format('SELECT ($1).%I::text', TG_ARGV[1]) USING NEW INTO k;
    INSERT INTO ml.queue (task_id, key) VALUES (TG_ARGV[0]::int, k);
    PERFORM pg_notify('ml_work', TG_ARGV[0]);
    RETURN NULL;
END $$;

-- Autonomous when possible: the task commits on its own, so `SELECT ml.wait(ml.create_embedding(...))`
-- works in one statement. Inside a transaction block, or when this transaction already touched the
-- table, it runs in the caller's transaction (then wait after COMMIT).
CREATE OR REPLACE FUNCTION ml._create_task(task_kind text, tbl regclass, model_name text, source_col text,
                                           result_col text, modality text, question text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
BEGIN
    PERFORM ml._check_task(task_kind, tbl, model_name, source_col, result_col, modality, question);
    IF statement_timestamp() = transaction_timestamp() AND NOT ml._locked_by_me(tbl) THEN
        RETURN ml._autonomous(format('SELECT ml._install_task(%L, %s::oid::regclass, %L, %L, %L, %L, %L)',
            task_kind, tbl::oid, model_name, source_col, result_col, modality, question))::bigint;
    END IF;
    RETURN ml._install_task(task_kind, tbl, model_name, source_col, result_col, modality, question);
END $$;

CREATE OR REPLACE FUNCTION ml.create_embedding(table_name regclass, model text, source_col text,
                                               result_col text DEFAULT 'embedding',
                                               modality text DEFAULT 'image') RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    SELECT ml._create_task('embedding', table_name, model, source_col, result_col, modality, NULL)
$$;

CREATE OR REPLACE FUNCTION ml.create_prediction(table_name regclass, model text, image_col text, question text,
                                                result_col text DEFAULT 'predict_result') RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    SELECT ml._create_task('prediction', table_name, model, image_col, result_col, 'image', question)
$$;

CREATE OR REPLACE FUNCTION ml._drop_task(task_kind text, tbl regclass, col text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    t ml.tasks;
BEGIN
    SELECT * INTO t FROM ml.tasks WHERE table_name = tbl AND result_col = col AND kind = task_kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: %.% is not a pgsight % column', tbl, coalesce(quote_ident(col), 'NULL'), task_kind;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgsight_' || t.id || '_insert', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgsight_' || t.id || '_update', tbl);
    EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, col);  -- drops its index too
    IF task_kind = 'prediction' THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, col || '_score');
    END IF;
    DELETE FROM ml.queue WHERE task_id = t.id;
    UPDATE ml.jobs SET status = 'cancelled', finished_at = now(), error = 'column dropped'
    WHERE task_id = t.id AND status IN ('queued', 'running');
    DELETE FROM ml.tasks WHERE id = t.id;
END $$;

CREATE OR REPLACE FUNCTION ml.drop_embedding(table_name regclass, result_col text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    SELECT ml._drop_task('embedding', table_name, result_col)
$$;

CREATE OR REPLACE FUNCTION ml.drop_prediction(table_name regclass, result_col text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    SELECT ml._drop_task('prediction', table_name, result_col)
$$;
