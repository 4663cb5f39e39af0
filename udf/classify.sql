-- Zero-shot labels with a CLIP-style model (a kind that embeds both images and texts):
-- ml.classify at query time (through the worker, like ml.answers) and ml.create_classification, a
-- label column and <col>_score kept in sync. The probabilities are the softmax over CLIP's
-- logits_per_image (logit_scale.exp() * cosine of the image and each label's text embedding).
--
-- A classification is a prediction task (same triggers, queue, write path ml_internal.write_predictions,
-- ownership and drop) whose question is its label set as JSON:
-- {"classify": {"labels": [...], "template": "a photo of {}" | null}}. The worker embeds a label
-- set once per model version (worker/models/clip/zeroshot.py).

-- The model must be one whose kind embeds both images and texts (clip).
CREATE OR REPLACE FUNCTION ml_private._check_classifier(model_name text) RETURNS ml.models
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models := ml_private._model_named(model_name);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ml.model_kinds k WHERE k.kind = m.kind AND k.outputs = 'embedding'
                   AND k.modalities @> '{image,text}') THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) cannot label images zero-shot: it does not embed both images and texts',
            model_name, m.kind
            USING HINT = 'use a model of kind clip', ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN m;
END $$;

-- The label set of a classification, validated, as the JSON its task and requests carry.
CREATE OR REPLACE FUNCTION ml_private._label_spec(labels text[], options jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    template jsonb;
    bad text;
    n int := coalesce(cardinality(labels), 0);
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'pgsight: zero-shot labels need a non-empty array of labels, got %', coalesce(labels::text, 'NULL')
            USING HINT = 'e.g. ARRAY[''a dog'', ''a cat'']', ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n > 1000 THEN
        RAISE EXCEPTION 'pgsight: at most 1000 labels, got %', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(labels, NULL) IS NOT NULL OR EXISTS (SELECT 1 FROM unnest(labels) x WHERE btrim(x) = '') THEN
        RAISE EXCEPTION 'pgsight: every label must be a non-empty text, got %', labels::text
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(quote_literal(x), ', ') INTO bad
    FROM (SELECT x FROM unnest(labels) x GROUP BY x HAVING count(*) > 1) d;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgsight: duplicate labels: %', bad
            USING HINT = 'give each label once', ERRCODE = 'invalid_parameter_value';
    END IF;
    options := coalesce(options, '{}');
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgsight: options must be a JSON object, got %', options USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(quote_literal(k), ', ') INTO bad FROM jsonb_object_keys(options) k WHERE k <> 'template';
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgsight: unknown option(s) % for zero-shot labels', bad
            USING HINT = 'valid options: template (e.g. {"template": "a photo of {}"})', ERRCODE = 'invalid_parameter_value';
    END IF;
    template := options->'template';
    IF template IS NOT NULL AND jsonb_typeof(template) <> 'null' AND (jsonb_typeof(template) <> 'string'
            OR (length(template->>0) - length(replace(template->>0, '{}', ''))) / 2 <> 1) THEN
        RAISE EXCEPTION 'pgsight: the template must be a text containing {} exactly once, got %', template
            USING HINT = 'e.g. {"template": "a photo of {}"}', ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN jsonb_build_object('labels', to_jsonb(labels), 'template', template);
END $$;

-- Is this prediction task's question a label set (a classification)? One that looks like a label
-- set but is not a valid one is refused here (ml_private._check_task), never by the worker later.
CREATE OR REPLACE FUNCTION ml_private._is_classification(question text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    spec jsonb;
BEGIN
    IF question IS NULL OR left(question, 13) <> '{"classify": ' OR NOT pg_input_is_valid(question, 'jsonb') THEN
        RETURN false;
    END IF;
    spec := question::jsonb -> 'classify';
    IF jsonb_typeof(spec) <> 'object' OR jsonb_typeof(spec->'labels') <> 'array' THEN
        RAISE EXCEPTION 'pgsight: a label set needs {"classify": {"labels": [...]}}, got %', question
            USING HINT = 'use ml.create_classification', ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM ml_private._label_spec(ARRAY(SELECT jsonb_array_elements_text(spec->'labels')), spec - 'labels');
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION ml_private._classify(model_name text, input text, image bytea, labels text[], options jsonb)
RETURNS TABLE (label text, score real)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models := ml_private._check_classifier(model_name);
    spec jsonb := ml_private._label_spec(labels, options);
BEGIN
    IF input IS NULL AND image IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT a->>'label', (a->>'score')::real
    FROM jsonb_array_elements(ml_private._rpc_json('classify', model_name,
            spec || jsonb_build_object('input', input, 'version', m.version), image)) AS a;
END $$;

-- The image's probability for each label, highest first.
CREATE OR REPLACE FUNCTION ml.classify(model text, image text, labels text[], options jsonb DEFAULT '{}')
RETURNS TABLE (label text, score real)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT c.label, c.score FROM ml_private._classify(model, image, NULL, labels, options) c ORDER BY c.score DESC
$$;
COMMENT ON FUNCTION ml.classify(text, text, text[], jsonb) IS
    'classify(model, image path or URL, labels, options DEFAULT ''{}'') -> (label, score) per label, most '
    'probable first. Zero-shot, with a CLIP-style model; options: template (default ''a photo of a {}'').';

CREATE OR REPLACE FUNCTION ml.classify(model text, image bytea, labels text[], options jsonb DEFAULT '{}')
RETURNS TABLE (label text, score real)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT c.label, c.score FROM ml_private._classify(model, NULL, image, labels, options) c ORDER BY c.score DESC
$$;
COMMENT ON FUNCTION ml.classify(text, bytea, text[], jsonb) IS
    'classify(model, image bytes, labels, options DEFAULT ''{}'') -> (label, score) per label, most probable '
    'first.';

-- A column result_col with each row's most probable label and result_col_score with its
-- probability, kept in sync like ml.create_prediction (same task machinery, ownership and drop).
-- Runs in the caller's transaction; for one statement: CALL ml.create_classification_and_wait(...).
CREATE OR REPLACE FUNCTION ml.create_classification(table_name regclass, model text, image_col text, labels text[],
                                                    result_col text DEFAULT 'label',
                                                    options jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    spec jsonb;
BEGIN
    PERFORM ml_private._check_classifier(model);
    spec := ml_private._label_spec(labels, options);
    RETURN ml_private._create_task('prediction', table_name, model, image_col, result_col, 'image',
                           jsonb_build_object('classify', spec)::text);
END $$;
COMMENT ON FUNCTION ml.create_classification(regclass, text, text, text[], text, jsonb) IS
    'create_classification(table, model, image_col, labels, result_col DEFAULT ''label'', options DEFAULT '
    '''{}'') -> job id. Adds result_col (the most probable label) and result_col_score, kept in sync like '
    'create_prediction.';

CREATE OR REPLACE PROCEDURE ml.create_classification_and_wait(table_name regclass, model text, image_col text,
                                                              labels text[],
                                                              result_col text DEFAULT 'label',
                                                              options jsonb DEFAULT '{}',
                                                              timeout interval DEFAULT NULL,
                                                              INOUT job_id bigint DEFAULT NULL,
                                                              INOUT status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ml_private._check_may_commit('create_classification_and_wait');
    job_id := ml.create_classification(table_name, model, image_col, labels, result_col, options);
    COMMIT;
    status := ml.wait(job_id, timeout);
END $$;

COMMENT ON PROCEDURE ml.create_classification_and_wait IS
    'ml.create_classification, COMMIT, ml.wait: one statement, outside a transaction block. Returns (job_id, status).';

-- Drops the label column and its _score column (ml.drop_prediction does the same).
CREATE OR REPLACE FUNCTION ml.drop_classification(table_name regclass, result_col text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._drop_task('prediction', table_name, result_col)
$$;
COMMENT ON FUNCTION ml.drop_classification(regclass, text) IS
    'drop_classification(table, result_col): drop the label column and its _score column (as drop_prediction).';
