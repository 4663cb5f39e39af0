-- Derived columns of user tables (ThanoSQL's CONVERT and PREDICT): ml.create_embedding,
-- ml.create_prediction and their drop_* functions, the triggers that keep them in sync and backfills.

-- Everything about a new task is checked here, in the caller's session, before anything changes.
CREATE OR REPLACE FUNCTION ml_private._check_task(task_kind text, tbl regclass, model_name text, source_col text,
                                          result_col text, modality text, question text)
RETURNS TABLE (key_col text, key_type text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models;
    k ml.model_kinds;
    src_type text;
    src_generated "char";
    pk_cols text[];
    pk_types text[];
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pgsight: table_name is NULL';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pgsight: % is not a table', tbl;
    END IF;
    IF (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl)
            IN ('ml', 'pg_catalog', 'information_schema', 'pg_toast') THEN
        RAISE EXCEPTION 'pgsight: % is not a table pgsight may change (system or ml schema)', tbl;
    END IF;
    IF (SELECT relpersistence FROM pg_class WHERE oid = tbl) = 't' THEN
        RAISE EXCEPTION 'pgsight: % is a temporary table, which no worker can see', tbl
            USING HINT = 'use an ordinary (or UNLOGGED) table';
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
    ELSIF task_kind = 'prediction' AND ml_private._is_generation(question) AND NOT ml_private._generates(m.kind) THEN  -- udf/generate.sql
        RAISE EXCEPTION 'pgsight: model % (kind %) does not generate text', model_name, m.kind
            USING HINT = 'use a model of kind captioner or blip2';
    ELSIF task_kind = 'prediction' AND k.outputs <> 'answer'
          AND NOT (k.modalities @> '{image,text}' AND ml_private._is_classification(question)) THEN  -- udf/classify.sql
        RAISE EXCEPTION 'pgsight: model % (kind %) makes embeddings and answers no questions', model_name, m.kind
            USING HINT = 'use ml.create_embedding';
    ELSIF task_kind = 'prediction' AND NOT ml_private._is_generation(question) AND NOT k.modalities @> '{image,text}' THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) answers no questions: it generates text from the image', model_name, m.kind
            USING HINT = 'use ml.create_generation';
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

    PERFORM ml_private._check_name('result column', result_col);
    IF task_kind = 'prediction' AND length(result_col) > 57 THEN
        RAISE EXCEPTION 'pgsight: result column name % is too long (57 characters at most, %_score must fit)',
            result_col, result_col;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped
               AND attname IN (result_col, CASE WHEN task_kind = 'prediction' THEN result_col || '_score' END)) THEN
        RAISE EXCEPTION 'pgsight: table % already has a column %', tbl, quote_ident(result_col)
            USING HINT = 'choose another result_col, or drop the old one (ml.drop_embedding / ml.drop_prediction)';
    END IF;

    SELECT format_type(atttypid, NULL), attgenerated INTO src_type, src_generated FROM pg_attribute
    WHERE attrelid = tbl AND attname = source_col AND attnum > 0 AND NOT attisdropped;
    IF src_type IS NULL THEN
        RAISE EXCEPTION 'pgsight: table % has no column %', tbl, coalesce(quote_literal(source_col), 'NULL')
            USING HINT = 'its columns: ' || (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                                             FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped);
    END IF;
    IF src_generated = 'v' THEN
        -- computed when read: no trigger ever sees a value, and the worker could not read it either
        RAISE EXCEPTION 'pgsight: column %.% is a VIRTUAL generated column, which pgsight cannot follow', tbl, source_col
            USING HINT = 'make it STORED (ALTER TABLE ... DROP COLUMN, then ADD COLUMN ... GENERATED ALWAYS AS (...) STORED), '
                         'or use the columns it is computed from';
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

-- Create the task: column(s), index, triggers, backfill. Runs in the caller's transaction: a ROLLBACK
-- undoes all of it.
CREATE OR REPLACE FUNCTION ml_private._install_task(task_kind text, tbl regclass, model_name text, source_col text,
                                            result_col text, modality text, question text,
                                            index_mode text DEFAULT 'auto') RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    chk record;
    m ml.models := (SELECT m FROM ml.models m WHERE name = model_name);
    tid int;
    jid bigint;
    queued bigint;
BEGIN
    SELECT * INTO chk FROM ml_private._check_task(task_kind, tbl, model_name, source_col, result_col, modality, question);
    IF index_mode NOT IN ('auto', 'now', 'off') THEN
        RAISE EXCEPTION 'pgsight: setting index must be auto, now or off, got %', quote_literal(index_mode);
    END IF;
    IF task_kind = 'embedding' THEN
        -- storage: vector (float4) or halfvec (float2: half the size, same recall; SET pgsight.storage = halfvec)
        IF coalesce(ml.setting('storage'), 'vector') NOT IN ('vector', 'halfvec') THEN
            RAISE EXCEPTION 'pgsight: setting storage must be vector or halfvec, got %', quote_literal(ml.setting('storage'));
        END IF;
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.%s(%s)', tbl, result_col, ml_private._vector_schema(),
                       coalesce(ml.setting('storage'), 'vector'), m.dim);
        PERFORM ml_private._result_storage(tbl, result_col);
    ELSE
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I text, ADD COLUMN %I real', tbl, result_col, result_col || '_score');
    END IF;

    -- ml_private._task_add also records the columns' attribute numbers: a RENAME is followed (ml_private._task, ml_private._on_ddl_end)
    tid := ml_private._task_add(current_user, tbl, task_kind, model_name, source_col, result_col, modality, question,
                        chk.key_col, chk.key_type,
                        CASE WHEN task_kind = 'embedding' THEN ml_private._unique_index_name(tbl, result_col) END);

    IF (SELECT relkind FROM pg_class WHERE oid = tbl) = 'p' THEN
        -- Partitioned: a row trigger on the parent is cloned onto every partition, present and future
        -- (CREATE TABLE ... PARTITION OF, ATTACH PARTITION), so rows written straight into one are queued.
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION ml_private._on_insert_row(%s)',
                       'pgsight_' || tid || '_insert', tbl, tid);
    ELSE
        -- New rows: one statement-level trigger (a bulk INSERT queues its rows in one go).
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION ml_private._on_insert(%s)', 'pgsight_' || tid || '_insert', tbl, tid);
    END IF;
    -- Changed sources only: UPDATEs of other columns (and the worker's write-back) never queue.
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %I ON %s FOR EACH ROW '
                   'WHEN (OLD.%I IS DISTINCT FROM NEW.%I) EXECUTE FUNCTION ml_private._on_update(%s)',
                   'pgsight_' || tid || '_update', source_col, tbl, source_col, source_col, tid);
    PERFORM ml_private._grant_worker(tid, true);
    jid := ml_private._backfill(tid);

    -- The HNSW index: maintained row by row it costs ~40x the write itself, so a large backfill
    -- builds it once when its last row is written (ml_internal.build_pending_index); small ones build it now.
    IF task_kind = 'embedding' AND index_mode <> 'off' THEN
        IF m.dim > 2000 THEN
            RAISE NOTICE 'pgsight: % dimensions is over HNSW''s limit of 2000; %.% gets no index', m.dim, tbl, result_col;
        ELSE
            SELECT total INTO queued FROM ml.jobs WHERE id = jid;
            IF index_mode = 'now' OR queued < ml.setting('index_defer_rows')::bigint THEN
                PERFORM ml_private._create_index(tid);
            ELSE
                PERFORM ml_private._task_index_state(tid, current_user, 'pending');
            END IF;
        END IF;
    END IF;
    RETURN jid;
END $$;

-- Result vectors of at most half a page (vector up to 1022 dimensions, halfvec up to 2044) are stored
-- inline, never TOASTed (STORAGE PLAIN): a write-back then writes one heap tuple instead of a heap
-- tuple, TOAST chunks and a TOAST index entry (8 % less WAL; the write-back statement up to 1.4x the
-- rows/s, bench/bench_capacity.py), and exact scans read vectors without detoasting. Larger vectors keep the type's storage (out of line), so that
-- a row always fits its page. docs/scale.md.
CREATE OR REPLACE FUNCTION ml_private._result_storage(tbl regclass, col text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    bytes int := (SELECT a.atttypmod * CASE t.typname WHEN 'halfvec' THEN 2 ELSE 4 END + 8
                  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                  WHERE a.attrelid = tbl AND a.attname = col AND t.typname IN ('vector', 'halfvec') AND a.atttypmod > 0);
BEGIN
    IF bytes <= 4096 THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STORAGE PLAIN', tbl, col);
    END IF;
END $$;

-- An index name no other relation of the table's schema has (a long table name truncated to 63
-- characters would otherwise give two result columns the same name).
CREATE OR REPLACE FUNCTION ml_private._unique_index_name(tbl regclass, result_col text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    ns oid := (SELECT relnamespace FROM pg_class WHERE oid = tbl);
    base text := format('%s_%s_hnsw', (SELECT relname FROM pg_class WHERE oid = tbl), result_col);
    name text := left(base, 63);
    i int := 1;
BEGIN
    WHILE EXISTS (SELECT 1 FROM pg_class WHERE relname = name AND relnamespace = ns)
       OR EXISTS (SELECT 1 FROM ml.tasks t JOIN pg_class c ON c.oid = t.table_name
                  WHERE t.index_name = name AND c.relnamespace = ns) LOOP
        name := left(base, 63 - length(i::text) - 1) || '_' || i;
        i := i + 1;
    END LOOP;
    RETURN name;
END $$;

-- Build the task's HNSW index and check that it exists, is valid and indexes the result column
-- before the task says 'ready'. A worker building a deferred index (ml_internal.build_pending_index) is
-- not the table's owner, and only the owner may CREATE INDEX: it builds it as the owner
-- (ml_private._as_owner); the owner (or a superuser) builds it with its own rights, as before.
CREATE OR REPLACE FUNCTION ml_private._create_index(tid int) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp SET maintenance_work_mem = '256MB' AS $$
DECLARE
    t ml.tasks := ml_private._task(tid);
    metric text := (SELECT metric FROM ml.models WHERE name = t.model);
    storage name := (SELECT ty.typname FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
                     WHERE a.attrelid = t.table_name AND a.attname = t.result_col);  -- vector or halfvec
    ns oid := (SELECT relnamespace FROM pg_class WHERE oid = t.table_name);
    ok boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE relname = t.index_name AND relnamespace = ns)
       AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                       WHERE c.relname = t.index_name AND c.relnamespace = ns AND i.indrelid = t.table_name
                         AND i.indkey[0] = t.result_attnum) THEN
        -- the name was taken by something else meanwhile: pick another
        t.index_name := ml_private._unique_index_name(t.table_name, t.result_col);
        UPDATE ml.tasks SET index_name = t.index_name WHERE id = tid;
    END IF;
    IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = t.table_name), 'USAGE') THEN
        -- the owner (or a superuser): with its own rights, as always
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (%I %s.%s)', t.index_name, t.table_name,
                       t.result_col, ml_private._vector_schema(), coalesce(storage, 'vector') ||
                       CASE metric WHEN 'l2' THEN '_l2_ops' WHEN 'ip' THEN '_ip_ops' ELSE '_cosine_ops' END);
    ELSE  -- a worker (ml_internal.build_pending_index): as the table's owner
        PERFORM ml_private._as_owner(t, 'index', ARRAY[coalesce(storage, 'vector') ||
                             CASE metric WHEN 'l2' THEN '_l2_ops' WHEN 'ip' THEN '_ip_ops' ELSE '_cosine_ops' END]);
    END IF;
    SELECT i.indisvalid AND i.indkey[0] = t.result_attnum INTO ok
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relname = t.index_name AND c.relnamespace = ns AND i.indrelid = t.table_name;
    IF NOT coalesce(ok, false) THEN
        RAISE EXCEPTION 'pgsight: index % of %.% is missing or invalid after CREATE INDEX', t.index_name,
            t.table_name, t.result_col;
    END IF;
    PERFORM ml_private._task_index_state(tid, current_user, 'ready');
END $$;

-- Worker: build one pending index whose backfill has no rows left. One transaction: a worker that
-- dies mid-build leaves the task pending for the next one. The table's lock is waited for briefly
-- (lock_timeout), with no other lock held but the task row's, so a user's DDL is never a deadlock victim.
CREATE OR REPLACE FUNCTION ml_internal.build_pending_index(worker bigint) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp SET lock_timeout = '200ms' AS $$
DECLARE
    tid int;
    t ml.tasks;
BEGIN
    FOR tid IN SELECT c.id FROM ml.tasks c
               WHERE c.index_state = 'pending' AND (c.not_before IS NULL OR c.not_before <= now())
                 AND NOT EXISTS (SELECT 1 FROM ml.queue q JOIN ml.jobs j ON j.id = q.job_id
                                 WHERE j.task_id = c.id AND j.kind = 'backfill') LOOP
        t := ml_private._task(tid);
        CONTINUE WHEN t.id IS NULL;
        BEGIN
            PERFORM 1 FROM ml.tasks WHERE id = tid AND index_state = 'pending' FOR UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            PERFORM ml_private._create_index(tid);  -- CREATE INDEX locks the table first thing
            RETURN tid;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- the table is busy (a user's DDL): next time
        WHEN insufficient_privilege THEN  -- only the table's owner may: the column stays without index
            UPDATE ml.tasks SET index_state = 'none', error = format(
                'no HNSW index: the worker (role %s) may not build it (%s); the owner can: SELECT ml_private._create_index(%s)',
                current_user, SQLERRM, tid) WHERE id = tid;
            PERFORM ml_internal.finish_jobs();
        WHEN OTHERS THEN
            PERFORM ml_internal._task_failed(tid, 'building the index: ' || SQLERRM, NULL);
        END;
    END LOOP;
    RETURN NULL;
END $$;

-- The worker role (pgsight_worker) reads exactly the key and source columns of a task's table and
-- writes exactly its result columns: column privileges, granted by the table's owner at creation.
CREATE OR REPLACE FUNCTION ml_private._grant_worker(tid int, grant_it boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    t ml.tasks := ml_private._task(tid);
    results text;
BEGIN
    IF t.id IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_worker') THEN
        RETURN;
    END IF;
    results := format('%I', t.result_col) ||
        CASE WHEN t.kind = 'prediction' THEN format(', %I', t.result_col || '_score') ELSE '' END;
    IF grant_it THEN
        EXECUTE format('GRANT SELECT (%I, %I), UPDATE (%s) ON %s TO pgsight_worker',
                       t.key_col, t.source_col, results, t.table_name);
    ELSIF NOT EXISTS (SELECT 1 FROM ml.tasks o WHERE o.table_name = t.table_name AND o.id <> t.id) THEN
        EXECUTE format('REVOKE SELECT (%I, %I) ON %s FROM pgsight_worker', t.key_col, t.source_col, t.table_name);
    END IF;
EXCEPTION WHEN OTHERS THEN  -- never in the way of a drop: the grants go with the columns anyway
    RAISE NOTICE 'pgsight: could not % pgsight_worker the columns of %: %',
        CASE WHEN grant_it THEN 'grant' ELSE 'revoke from' END, t.table_name, SQLERRM;
END $$;

-- Queue every row of a task in a new backfill job; returns the job id. The keys are read with the
-- caller's rights; ml_private._backfill_job (SECURITY DEFINER) queues them. Keys are written as text under
-- fixed settings (the SET clauses), so that they read back whatever the session's DateStyle.
CREATE OR REPLACE FUNCTION ml_private._backfill(tid int) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' AS $$
DECLARE
    t ml.tasks := ml_private._task(tid);
    keys text[];
BEGIN
    EXECUTE format('SELECT array_agg(%I::text) FROM %s WHERE %I IS NOT NULL', t.key_col, t.table_name, t.source_col)
    INTO keys;
    RETURN ml_private._backfill_job(tid, current_user, keys);
END $$;

-- Trigger functions are SECURITY DEFINER: whoever writes the user's table (an application role
-- that knows nothing of pgsight) may queue its rows, and nothing else. They never fail the user's
-- statement: whatever goes wrong is recorded on the task (ml.tasks.error) and the statement goes on.
-- Keys are cast to text under fixed settings (see ml_private._backfill).
CREATE OR REPLACE FUNCTION ml_private._on_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' AS $$
DECLARE
    t ml.tasks;
    n bigint;
BEGIN
    t := ml_private._task(TG_ARGV[0]::int);
    -- the task's table (or a partition of it), not a trigger some user pointed at another's task
    IF t.id IS NULL OR (t.table_name <> TG_RELID
                        AND t.table_name NOT IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a)) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('INSERT INTO ml.queue (task_id, key) SELECT %s, %I::text FROM new_rows WHERE %I IS NOT NULL',
                   t.id, t.key_col, t.source_col);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('ml_work', t.id::text);
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    PERFORM ml_internal._trigger_failed(TG_ARGV[0]::int, SQLERRM);
    RETURN NULL;
END $$;

-- Row trigger of partitioned tables (cloned onto each partition).
CREATE OR REPLACE FUNCTION ml_private._on_insert_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' AS $$
DECLARE
    t ml.tasks;
    k text;
    has_src boolean;
BEGIN
    t := ml_private._task(TG_ARGV[0]::int);
    -- the task's table (or a partition of it), not a trigger some user pointed at another's task
    IF t.id IS NULL OR (t.table_name <> TG_RELID
                        AND t.table_name NOT IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a)) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT ($1).%I::text, ($1).%I IS NOT NULL', t.key_col, t.source_col) USING NEW INTO k, has_src;
    IF has_src THEN
        INSERT INTO ml.queue (task_id, key) VALUES (t.id, k);
        PERFORM pg_notify('ml_work', t.id::text);
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    PERFORM ml_internal._trigger_failed(TG_ARGV[0]::int, SQLERRM);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ml_private._on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' AS $$
DECLARE
    t ml.tasks;
    k text;
BEGIN
    t := ml_private._task(TG_ARGV[0]::int);
    -- the task's table (or a partition of it), not a trigger some user pointed at another's task
    IF t.id IS NULL OR (t.table_name <> TG_RELID
                        AND t.table_name NOT IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a)) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT ($1).%I::text', t.key_col) USING NEW INTO k;
    INSERT INTO ml.queue (task_id, key) VALUES (t.id, k);
    PERFORM pg_notify('ml_work', t.id::text);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    PERFORM ml_internal._trigger_failed(TG_ARGV[0]::int, SQLERRM);
    RETURN NULL;
END $$;

-- A trigger could not queue rows: say so on the task (ml.tasks.error, `pgsight status`) and in the
-- server log, and let the user's statement go on.
CREATE OR REPLACE FUNCTION ml_internal._trigger_failed(tid int, err text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    RAISE WARNING 'pgsight: could not queue rows of task %: %', tid, err;
    UPDATE ml.tasks SET state = 'failing', error = 'queueing new rows: ' || err, failed_at = now() WHERE id = tid;
EXCEPTION WHEN OTHERS THEN
    NULL;
END $$;

-- Runs in the caller's transaction: a ROLLBACK undoes the column, index, triggers and job. To submit,
-- commit and wait in one statement: CALL ml.create_embedding_and_wait(...) (udf/ddl.sql).
CREATE OR REPLACE FUNCTION ml_private._create_task(task_kind text, tbl regclass, model_name text, source_col text,
                                           result_col text, modality text, question text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    RETURN ml_private._install_task(task_kind, tbl, model_name, source_col, result_col, modality, question, ml.setting('index'));
END $$;

CREATE OR REPLACE FUNCTION ml.create_embedding(table_name regclass, model text, source_col text,
                                               result_col text DEFAULT 'embedding',
                                               modality text DEFAULT 'image') RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._create_task('embedding', table_name, model, source_col, result_col, modality, NULL)
$$;
COMMENT ON FUNCTION ml.create_embedding(regclass, text, text, text, text) IS
    'create_embedding(table, model, source_col, result_col DEFAULT ''embedding'', modality DEFAULT ''image'') '
    '-> job id. Adds a vector column kept in sync by the worker: existing rows are backfilled, inserted and '
    'updated ones recomputed. modality: image (a path, URL or bytea column) or text. Runs in the caller''s '
    'transaction.';

CREATE OR REPLACE FUNCTION ml.create_prediction(table_name regclass, model text, image_col text, question text,
                                                result_col text DEFAULT 'predict_result') RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._create_task('prediction', table_name, model, image_col, result_col, 'image', question)
$$;
COMMENT ON FUNCTION ml.create_prediction(regclass, text, text, text, text) IS
    'create_prediction(table, model, image_col, question, result_col DEFAULT ''predict_result'') -> job id. '
    'Adds a column with the model''s answer to question about each row''s image (and result_col_score), kept in '
    'sync.';

-- Works whatever happened to the table since (columns renamed, source dropped ...).
CREATE OR REPLACE FUNCTION ml_private._drop_task(task_kind text, tbl regclass, col text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    tid int;
    t ml.tasks;
BEGIN
    SELECT x.id INTO tid FROM ml.tasks x
    WHERE x.table_name = tbl AND x.kind = task_kind
      AND (x.result_col = col OR x.result_attnum = (SELECT attnum FROM pg_attribute
                                                    WHERE attrelid = tbl AND attname = col AND NOT attisdropped));
    IF tid IS NULL THEN
        RAISE EXCEPTION 'pgsight: %.% is not a pgsight % column', tbl, coalesce(quote_ident(col), 'NULL'), task_kind
            USING HINT = coalesce('its pgsight columns: ' || (SELECT string_agg(quote_ident(x.result_col) || ' (' || x.kind || ')', ', ')
                                                               FROM ml.tasks x WHERE x.table_name = tbl), 'it has none');
    END IF;
    t := ml_private._task(tid);
    PERFORM ml_private._grant_worker(t.id, false);  -- before the column goes (the drop event forgets the task)
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgsight_' || t.id || '_insert', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgsight_' || t.id || '_update', tbl);
    EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, t.result_col);  -- drops its index too
    IF task_kind = 'prediction' THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, t.result_col || '_score');
    END IF;
    PERFORM ml_private._tasks_forget(ARRAY[t.id]);  -- its queue rows, open jobs and the task
END $$;

CREATE OR REPLACE FUNCTION ml.drop_embedding(table_name regclass, result_col text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._drop_task('embedding', table_name, result_col)
$$;
COMMENT ON FUNCTION ml.drop_embedding(regclass, text) IS
    'drop_embedding(table, result_col): stop keeping the column in sync and drop it, its index, queue rows and '
    'errors.';

CREATE OR REPLACE FUNCTION ml.drop_prediction(table_name regclass, result_col text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._drop_task('prediction', table_name, result_col)
$$;
COMMENT ON FUNCTION ml.drop_prediction(regclass, text) IS
    'drop_prediction(table, result_col): stop keeping the column (and its _score column) in sync and drop them.';
