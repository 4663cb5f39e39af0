-- Text generated from images (generative commenting, captioning): ml.generate at query time
-- (through the worker, like ml.answer), ml.create_generation, a text column kept in sync, and
-- ml.evaluate_generation. Models of kind captioner (VisionEncoderDecoderModel) and blip2 generate.
--
-- A generation column is a prediction task (same triggers, queue, write path ml_internal.write_predictions,
-- ownership and drop) whose question is the generation spec as JSON:
-- {"generate": {"prompt": "..." | null, "options": {...generate() options}}}; its result_col holds the
-- text, result_col_score the geometric mean of the generated tokens' probabilities.

-- The kinds whose workers generate text (their adapters have generate(); worker/models/generation.py).
CREATE OR REPLACE FUNCTION ml_private._generates(kind text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT kind IN ('captioner', 'blip2', 'frozen_lm')
$$;

CREATE OR REPLACE FUNCTION ml_private._check_generator(model_name text) RETURNS ml.models
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models := ml_private._model_named(model_name);
BEGIN
    IF NOT ml_private._generates(m.kind) THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) does not generate text', model_name, m.kind
            USING HINT = 'use a model of kind captioner or frozen_lm (ml.build_model) or blip2', ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN m;
END $$;

-- generate()'s options, checked: known keys, types and ranges (the worker checks them again the same
-- way: worker/models/generation.py). Returns them without NULLs.
CREATE OR REPLACE FUNCTION ml_private._generation_options(options jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    spec jsonb := '{"max_new_tokens": ["int", 1, 512, false], "min_new_tokens": ["int", 0, 512, false],
                    "num_beams": ["int", 1, 32, false], "do_sample": ["bool"], "top_p": ["num", 0, 1, true],
                    "top_k": ["int", 0, 10000, false], "temperature": ["num", 0, 100, true],
                    "repetition_penalty": ["num", 0, 100, true], "no_repeat_ngram_size": ["int", 0, 32, false],
                    "length_penalty": ["num", -100, 100, false], "seed": ["int", 0, 2147483647, false]}';
    key text;
    val jsonb;
    r jsonb;
    out jsonb := '{}';
    bad text;
BEGIN
    options := coalesce(options, '{}');
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: generation options must be a JSON object, got %', options
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR key, val IN SELECT * FROM jsonb_each(options) LOOP
        r := spec->key;
        IF r IS NULL THEN
            RAISE EXCEPTION 'pgsight: unknown generation option %', quote_literal(key)
                USING HINT = 'valid options: ' || (SELECT string_agg(k, ', ') FROM jsonb_object_keys(spec) k),
                      ERRCODE = 'invalid_parameter_value';
        END IF;
        CONTINUE WHEN jsonb_typeof(val) = 'null';
        IF r->>0 = 'bool' THEN
            IF jsonb_typeof(val) <> 'boolean' THEN
                RAISE EXCEPTION 'pgsight: generation option % must be true or false, got %', key, val
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF jsonb_typeof(val) <> 'number' OR (r->>0 = 'int' AND val::numeric <> trunc(val::numeric))
              OR val::numeric < (r->>1)::numeric OR val::numeric > (r->>2)::numeric
              OR ((r->>3)::boolean AND val::numeric = (r->>1)::numeric) THEN
            RAISE EXCEPTION 'pgsight: generation option % must be % % % and %, got %', key,
                CASE r->>0 WHEN 'int' THEN 'an integer' ELSE 'a number' END,
                CASE WHEN (r->>3)::boolean THEN 'above' ELSE 'between' END, r->>1,
                CASE WHEN (r->>3)::boolean THEN 'at most ' ELSE '' END || (r->>2), val
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        out := out || jsonb_build_object(key, val);
    END LOOP;
    IF NOT coalesce((out->>'do_sample')::boolean, false) THEN
        SELECT string_agg(k, ', ') INTO bad FROM jsonb_object_keys(out) k WHERE k IN ('top_p', 'top_k', 'temperature');
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'pgsight: generation option % applies to sampling only', bad
                USING HINT = 'add "do_sample": true', ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF (out->>'min_new_tokens')::int > coalesce((out->>'max_new_tokens')::int, 512) THEN
        RAISE EXCEPTION 'pgsight: generation option min_new_tokens must not exceed max_new_tokens'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN out;
END $$;

-- The spec a generation task or request carries.
CREATE OR REPLACE FUNCTION ml_private._generation_spec(prompt text, options jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    IF length(prompt) > 10000 THEN
        RAISE EXCEPTION 'pgsight: the prompt is too long (% characters, 10000 at most)', length(prompt)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN jsonb_build_object('prompt', nullif(prompt, ''), 'options', ml_private._generation_options(options));
END $$;

-- Is this prediction task's question a generation spec? One that looks like a spec but is not a
-- valid one is refused here (ml_private._check_task), never by the worker later.
CREATE OR REPLACE FUNCTION ml_private._is_generation(question text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    spec jsonb;
BEGIN
    IF question IS NULL OR left(question, 13) <> '{"generate": ' OR NOT pg_input_is_valid(question, 'jsonb') THEN
        RETURN false;
    END IF;
    spec := question::jsonb -> 'generate';
    IF jsonb_typeof(spec) <> 'object' OR (spec ? 'prompt' AND jsonb_typeof(spec->'prompt') NOT IN ('string', 'null'))
       OR EXISTS (SELECT 1 FROM jsonb_object_keys(spec) k WHERE k NOT IN ('prompt', 'options')) THEN
        RAISE EXCEPTION 'pgsight: a generation spec is {"generate": {"prompt": text or null, "options": {...}}}, got %', question
            USING HINT = 'use ml.create_generation', ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM ml_private._generation_options(spec->'options');
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION ml_private._generate(model_name text, input text, image bytea, prompt text, options jsonb)
RETURNS TABLE (text text, score real)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models := ml_private._check_generator(model_name);
    spec jsonb := ml_private._generation_spec(prompt, options);
    r jsonb;
BEGIN
    IF input IS NULL AND image IS NULL THEN
        RETURN;
    END IF;
    r := ml_private._rpc_json('generate', model_name, spec || jsonb_build_object('input', input, 'version', m.version), image);
    text := r->>'text';
    score := (r->>'score')::real;
    RETURN NEXT;
END $$;

-- The text the model generates for the image (after the prompt, which is not repeated); NULL for a
-- NULL image. Options: generate()'s (max_new_tokens, num_beams, do_sample, top_p, top_k, temperature,
-- repetition_penalty, no_repeat_ngram_size, length_penalty, min_new_tokens, seed).
CREATE OR REPLACE FUNCTION ml.generate(model text, image text, prompt text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT g.text FROM ml_private._generate(model, image, NULL, prompt, options) g
$$;

CREATE OR REPLACE FUNCTION ml.generate(model text, image bytea, prompt text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT g.text FROM ml_private._generate(model, NULL, image, prompt, options) g
$$;

-- A column result_col with the text generated for each row's image (and result_col_score), kept in
-- sync like ml.create_prediction (same task machinery, ownership and drop). Options: generate()'s and
-- "prompt". Runs in the caller's transaction; for one statement: CALL ml.create_generation_and_wait(...).
CREATE OR REPLACE FUNCTION ml.create_generation(table_name regclass, model text, image_col text,
                                                result_col text DEFAULT 'generated',
                                                options jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    spec jsonb;
BEGIN
    PERFORM ml_private._check_generator(model);
    IF options IS NOT NULL AND jsonb_typeof(options) = 'object' AND options ? 'prompt'
       AND jsonb_typeof(options->'prompt') NOT IN ('string', 'null') THEN
        RAISE EXCEPTION 'pgsight: option prompt must be a text, got %', options->'prompt'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    spec := ml_private._generation_spec(options->>'prompt', CASE WHEN jsonb_typeof(options) = 'object' THEN options - 'prompt'
                                                         ELSE options END);
    RETURN ml_private._create_task('prediction', table_name, model, image_col, result_col, 'image',
                           jsonb_build_object('generate', spec)::text);
END $$;

CREATE OR REPLACE PROCEDURE ml.create_generation_and_wait(table_name regclass, model text, image_col text,
                                                          result_col text DEFAULT 'generated',
                                                          options jsonb DEFAULT '{}',
                                                          timeout interval DEFAULT NULL,
                                                          INOUT job_id bigint DEFAULT NULL,
                                                          INOUT status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ml_private._check_may_commit('create_generation_and_wait');
    job_id := ml.create_generation(table_name, model, image_col, result_col, options);
    COMMIT;
    status := ml.wait(job_id, timeout);
END $$;

COMMENT ON PROCEDURE ml.create_generation_and_wait IS
    'ml.create_generation, COMMIT, ml.wait: one statement, outside a transaction block. Returns (job_id, status).';

-- Drops the generated column and its _score column (ml.drop_prediction does the same).
CREATE OR REPLACE FUNCTION ml.drop_generation(table_name regclass, result_col text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._drop_task('prediction', table_name, result_col)
$$;

-- BLEU-1..4, METEOR, ROUGE-L, CIDEr (the COCO caption evaluation, pycocoevalcap), perplexity of the
-- references, distinct-1/2 and mean length of the generated texts, over the (image, reference) rows
-- of the query; several references of one image are grouped. A metric that cannot be computed has
-- value NULL and says why in note (METEOR without a Java runtime on the worker). The query runs here,
-- with the caller's rights, like ml.evaluate_retrieval's.
CREATE OR REPLACE FUNCTION ml.evaluate_generation(model text, query text, options jsonb DEFAULT '{}')
RETURNS TABLE (metric text, value float8, note text)
LANGUAGE plpgsql VOLATILE AS $$  -- the caller's search_path, as ml.build_model
DECLARE
    bad text;
BEGIN
    PERFORM ml_private._check_generator(model);
    IF options IS NULL OR pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: options must be a JSON object, got %', coalesce(options::text, 'NULL');
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_literal(k), ', ') INTO bad FROM pg_catalog.jsonb_object_keys(options) k
    WHERE k OPERATOR(pg_catalog.<>) ALL ('{image_col,text_col,hypothesis_col,prompt,batch_size,timeout,meteor,max_new_tokens,min_new_tokens,num_beams,do_sample,top_p,top_k,temperature,repetition_penalty,no_repeat_ngram_size,length_penalty,seed}'::text[]);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgsight: unknown option(s) % for ml.evaluate_generation', bad
            USING HINT = 'options: image_col, text_col (the references), hypothesis_col (score these texts instead of '
                         'generating), prompt, batch_size, timeout, meteor, and generate()''s (max_new_tokens, num_beams, ...)';
    END IF;
    IF options ? 'meteor' AND pg_catalog.jsonb_typeof(options->'meteor') <> 'boolean' THEN
        RAISE EXCEPTION 'pgsight: option meteor must be true or false, got %', options->'meteor';
    END IF;
    PERFORM ml_private._generation_spec(options->>'prompt', options - '{image_col,text_col,hypothesis_col,prompt,batch_size,timeout,meteor}'::text[]);
    RETURN QUERY
    SELECT r->>'metric', (r->>'value')::float8, r->>'note'
    FROM pg_catalog.jsonb_array_elements(ml_private._evaluate('generation', model, query, options)->'rows') AS r;
END $$;

COMMENT ON FUNCTION ml.generate(text, text, text, jsonb) IS
    'Text a captioner, frozen_lm or blip2 model generates for an image (path or URL), after the optional prompt; options are generate()''s (docs/generation.md).';
COMMENT ON FUNCTION ml.generate(text, bytea, text, jsonb) IS
    'Text a captioner, frozen_lm or blip2 model generates for an image (bytes), after the optional prompt; options are generate()''s (docs/generation.md).';
COMMENT ON FUNCTION ml.create_generation(regclass, text, text, text, jsonb) IS
    'Adds result_col (text) and result_col_score (real) to a table, generated for each row''s image and kept in sync; returns the backfill job id.';
COMMENT ON FUNCTION ml.drop_generation(regclass, text) IS
    'Drops a generated column made by ml.create_generation (and its _score column).';
COMMENT ON FUNCTION ml.evaluate_generation(text, text, jsonb) IS
    'BLEU-1..4, METEOR, ROUGE-L, CIDEr, perplexity, distinct-1/2 and mean length of a generating model over (image, reference) rows of a query.';
