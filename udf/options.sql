-- Option values checked at submission (ml.load_model, ml.build_model), with the valid range in the
-- message, so that a typo never reaches a worker.

-- The valid range of a numeric option: (low, high, integer?, low exclusive?). NULL: not a numeric option.
CREATE OR REPLACE FUNCTION ml_private._option_range(key text, OUT low numeric, OUT high numeric, OUT whole boolean,
                                            OUT above boolean)
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.low, r.high, r.whole, r.above
    FROM (VALUES ('size', 1, 128, true, false), ('image_size', 8, 4096, true, false),
                 ('batch_size', 1, 65536, true, false), ('max_epochs', 1, 10000, true, false),
                 ('max_new_tokens', 1, 512, true, false), ('max_question_tokens', 1, 4096, true, false),
                 ('proj_dim', 1, 8192, true, false), ('seed', 0, 2147483647, true, false),
                 ('learning_rate', 0, 10, false, true), ('temperature', 0, 100, false, true),
                 ('weight_decay', 0, 10, false, false), ('warmup_ratio', 0, 1, false, false),
                 ('delay', 0, 60, false, false))
         AS r(key, low, high, whole, above)
    WHERE r.key = _option_range.key
$$;

CREATE OR REPLACE FUNCTION ml_private._check_option(key text, val jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    r record;
    range_text text;
BEGIN
    SELECT * INTO r FROM ml_private._option_range(key) o WHERE o.low IS NOT NULL;
    IF NOT FOUND OR val IS NULL OR jsonb_typeof(val) = 'null' THEN
        RETURN;
    END IF;
    range_text := format('%s%s %s %s and %s', CASE WHEN r.above THEN 'positive: ' ELSE '' END,
                         CASE WHEN r.whole THEN 'an integer' ELSE 'a number' END,
                         CASE WHEN r.above THEN 'above' ELSE 'between' END, r.low,
                         CASE WHEN r.above THEN 'at most ' ELSE '' END || r.high);
    IF jsonb_typeof(val) <> 'number' OR (r.whole AND val::numeric <> trunc(val::numeric))
       OR val::numeric > r.high OR val::numeric < r.low OR (r.above AND val::numeric = r.low) THEN
        RAISE EXCEPTION 'pgsight: option % must be %, got %', key, range_text, val;
    END IF;
END $$;

-- ml.load_model's options: known keys for the kinds defined in kinds.sql (a kind added by a plugin
-- is checked by its worker), each in its range.
CREATE OR REPLACE FUNCTION ml_private._check_load_options(kind text, options jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    known text[] := CASE kind WHEN 'pixels' THEN '{size}' WHEN 'clip' THEN '{}' WHEN 'simclr' THEN '{image_size}'
                              WHEN 'vilt' THEN '{image_size}' WHEN 'captioner' THEN '{}' WHEN 'dual_encoder' THEN '{}'
                              WHEN 'frozen_lm' THEN '{}'
                              WHEN 'blip2' THEN '{prompt,max_new_tokens,max_question_tokens}' END;
    key text;
    val jsonb;
BEGIN
    FOR key, val IN SELECT * FROM jsonb_each(options) LOOP
        IF known IS NOT NULL AND key <> 'overwrite' AND NOT key = ANY (known) THEN
            RAISE EXCEPTION 'pgsight: unknown option % for loading a % model', quote_literal(key), kind
                USING HINT = 'options of ml.load_model for ' || kind || ': '
                             || array_to_string(known || '{overwrite}'::text[], ', ');
        END IF;
        IF key = 'overwrite' AND jsonb_typeof(val) <> 'boolean' THEN
            RAISE EXCEPTION 'pgsight: option overwrite must be true or false, got %', val;
        END IF;
        PERFORM ml_private._check_option(key, val);
    END LOOP;
END $$;
