-- Reads and writes a worker makes besides the queue: model lookup and the blob store.

CREATE OR REPLACE FUNCTION ml_internal.model_info(model_name text)
RETURNS TABLE (name text, kind text, source text, options jsonb, info jsonb, stored boolean, version int, dim int,
               updated_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT m.name, m.kind, m.source, m.options, m.info, m.stored, m.version, m.dim, m.updated_at
    FROM ml.models m WHERE m.name = model_name
$$;

CREATE OR REPLACE FUNCTION ml_internal.blob_put(key text, chunk int, data bytea) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    INSERT INTO ml.blobs (key, chunk, data) VALUES (key, chunk, data)
    ON CONFLICT ON CONSTRAINT blobs_pkey DO UPDATE SET data = EXCLUDED.data
$$;

CREATE OR REPLACE FUNCTION ml_internal.blob_delete(prefix text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    DELETE FROM ml.blobs b WHERE starts_with(b.key, prefix)
$$;

CREATE OR REPLACE FUNCTION ml_internal.blob_get(prefix text) RETURNS TABLE (key text, chunk int, data bytea)
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT b.key, b.chunk, b.data FROM ml.blobs b WHERE starts_with(b.key, prefix) ORDER BY b.key, b.chunk
$$;
