-- Replies that see the conversation: ml.reply(model, image, context) with a frozen_lm model (a frozen
-- causal LM fed projected image embeddings; worker/models/frozen_lm). It reaches the worker exactly like
-- ml.generate (udf/generate.sql: a 'generate' request whose prompt is the context): the frozen_lm
-- adapter reads the image prefix, then the context and its separator, and writes the reply after them.

CREATE OR REPLACE FUNCTION ml_private._check_replier(model_name text) RETURNS ml.models
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models := ml_private._model_named(model_name);
BEGIN
    IF m.kind <> 'frozen_lm' THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) does not reply to a conversation', model_name, m.kind
            USING HINT = 'ml.reply needs a frozen_lm model (ml.build_model(name, ''frozen_lm'', query, options)); '
                         || CASE WHEN ml_private._generates(m.kind) THEN 'ml.generate continues a prompt with this one'
                                 ELSE 'see docs/generation.md' END,
                  ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN m;
END $$;

CREATE OR REPLACE FUNCTION ml_private._reply(model_name text, input text, image bytea, context text, options jsonb)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    PERFORM ml_private._check_replier(model_name);
    -- the conversation continues from its end: its last 10,000 characters are enough (the model keeps
    -- only its last max_context_length tokens)
    RETURN (SELECT g.text FROM ml_private._generate(model_name, input, image, right(coalesce(context, ''), 10000), options) g);
END $$;

-- The reply a frozen_lm model writes for the image after the conversation so far (context; '' or NULL:
-- none); the context is not repeated. NULL image -> NULL. Options: generate()'s, as ml.generate.
CREATE OR REPLACE FUNCTION ml.reply(model text, image text, context text DEFAULT '', options jsonb DEFAULT '{}')
RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._reply(model, image, NULL, context, options)
$$;

CREATE OR REPLACE FUNCTION ml.reply(model text, image bytea, context text DEFAULT '', options jsonb DEFAULT '{}')
RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._reply(model, NULL, image, context, options)
$$;

COMMENT ON FUNCTION ml.reply(text, text, text, jsonb) IS
    'The reply a frozen_lm model writes for an image (path or URL) after the conversation so far (context); options are generate()''s (docs/generation.md).';
COMMENT ON FUNCTION ml.reply(text, bytea, text, jsonb) IS
    'The reply a frozen_lm model writes for an image (bytes) after the conversation so far (context); options are generate()''s (docs/generation.md).';
