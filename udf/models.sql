-- Registering models: ml.load_model / ml.drop_model (ThanoSQL's GET MODEL).

-- The caller's model of that name (ml.models' row security applies), or an error naming it.
CREATE OR REPLACE FUNCTION ml_private._model_named(model_name text) RETURNS ml.models
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models;
BEGIN
    SELECT * INTO m FROM ml.models WHERE name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: no model named %', coalesce(quote_literal(model_name), 'NULL')
            USING HINT = 'see SELECT name, kind FROM ml.models', ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN m;
END $$;

CREATE OR REPLACE FUNCTION ml.load_model(name text, kind text, source text DEFAULT NULL,
                                         options jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    k ml.model_kinds;
    existing ml.models;
    described jsonb;
    model_dim int;
    opts jsonb := coalesce(options, '{}');
BEGIN
    PERFORM ml_private._check_name('model', name);
    SELECT * INTO k FROM ml.model_kinds mk WHERE mk.kind = load_model.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: unknown model kind %', quote_literal(kind)
            USING HINT = 'known kinds: ' || (SELECT string_agg(mk.kind, ', ' ORDER BY mk.kind) FROM ml.model_kinds mk);
    END IF;
    IF jsonb_typeof(opts) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: options must be a JSON object, got %', opts;
    END IF;
    PERFORM ml_private._check_load_options(kind, opts);
    SELECT * INTO existing FROM ml.models m WHERE m.name = load_model.name;
    IF FOUND AND NOT coalesce((opts->>'overwrite')::boolean, false) THEN
        RAISE EXCEPTION 'pgsight: model % already exists', quote_literal(name)
            USING HINT = 'pass options => ''{"overwrite": true}'' to replace it, or ml.drop_model first';
    END IF;
    IF existing.name IS NOT NULL THEN  -- before the worker opens anything: may the caller replace it?
        PERFORM ml_private._check_model_change(current_user, existing);
    END IF;

    IF kind = 'pixels' THEN
        model_dim := coalesce((opts->>'size')::int, 16);
        IF model_dim < 1 OR model_dim > 128 THEN
            RAISE EXCEPTION 'pgsight: pixels option size must be between 1 and 128, got %', model_dim;
        END IF;
        model_dim := model_dim * model_dim;
        described := jsonb_build_object('dim', model_dim);
    ELSE
        IF source IS NULL THEN
            RAISE EXCEPTION 'pgsight: model kind % needs a source (a hub id or a directory the worker can read)', kind;
        END IF;
        -- The worker opens the checkpoint and tells its dimension and labels.
        described := ml_private._rpc_json('describe', NULL,
            jsonb_build_object('kind', kind, 'source', source, 'options', opts - 'overwrite'), NULL,
            greatest(ml.setting('rpc_timeout')::interval, interval '10 minutes'));
    END IF;

    -- SECURITY DEFINER: checks ownership again and records the caller as the owner of a new model
    IF ml_private._model_put(current_user, name, kind, source, (described->>'dim')::int, opts - 'overwrite',
                     coalesce(described->'info', '{}')) THEN
        PERFORM ml_private._model_replaced(name);
    END IF;
    RETURN name;
END $$;
COMMENT ON FUNCTION ml.load_model(text, text, text, jsonb) IS
    'Register a model: load_model(name, kind, source DEFAULT NULL, options DEFAULT ''{}'') -> name. kind is a '
    'row of ml.model_kinds; source a hub id or a directory the worker can read (NULL: the kind''s default). A '
    'worker loads it once to check it and learn its dimension. Replacing an existing name recomputes the '
    'columns that use it.';

-- A model's weights changed (overwrite or a new training run): its columns are computed again.
CREATE OR REPLACE FUNCTION ml_private._model_replaced(model_name text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    t ml.tasks;
    new_dim int := (SELECT dim FROM ml.models WHERE name = model_name);
BEGIN
    FOR t IN SELECT * FROM ml.tasks WHERE model = model_name LOOP
        IF t.kind = 'embedding' AND new_dim IS DISTINCT FROM (
                SELECT atttypmod FROM pg_attribute WHERE attrelid = t.table_name AND attname = t.result_col) THEN
            -- the index goes with the old type; a large re-embedding builds it again at the end
            EXECUTE format('DROP INDEX IF EXISTS %s', (SELECT format('%I.%I', n.nspname, t.index_name)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t.table_name));
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s.vector(%s) USING NULL',
                           t.table_name, t.result_col, ml_private._vector_schema(), new_dim);
            PERFORM ml_private._result_storage(t.table_name, t.result_col);  -- a new type takes the type's storage
            IF new_dim <= 2000 AND t.index_state <> 'none' THEN
                PERFORM ml_private._task_index_state(t.id, current_user, 'pending');
            END IF;
        END IF;
        PERFORM ml_private._backfill(t.id);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION ml.drop_model(name text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._model_drop(current_user, name)  -- the owner or pgsight_admin, and no column uses it
$$;
COMMENT ON FUNCTION ml.drop_model(text) IS
    'drop_model(name): forget a registered model and its stored weights. Only its owner (or pgsight_admin), and '
    'only when no column uses it.';
