-- Query-time calls: ml.embed_image, ml.embed_text, ml.answer, ml.answers. The request is written and
-- committed through the session's loopback connection (so the worker can see it at once), the worker
-- is woken with NOTIFY ml_rpc, and the loopback session polls for the answer. While a worker computes,
-- it holds the request's advisory lock (class 1885827699, key id mod 2^31, taken by ml.rpc_claim and
-- released by ml.rpc_reply), so the loopback session sleeps on that lock instead of polling: no CPU
-- taken from the model, and it wakes the moment the answer is written.

-- Runs in the loopback session. A procedure, so that it can COMMIT the request and then wait in the
-- same round trip. (Procedures that COMMIT cannot carry SET clauses: every name is qualified.)
CREATE OR REPLACE PROCEDURE ml._rpc_call(op text, model text, payload jsonb, image bytea, timeout interval,
                                         INOUT status text DEFAULT NULL, INOUT vec text DEFAULT NULL,
                                         INOUT response text DEFAULT NULL, INOUT error text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    rid bigint;
    deadline timestamptz;
    polls int := 0;
    claimer bigint;
    waited bigint;
BEGIN
    INSERT INTO ml.rpc (op, model, payload, image) VALUES (op, model, payload, image) RETURNING ml.rpc.id INTO rid;
    PERFORM pg_catalog.pg_notify('ml_rpc', rid::text);
    COMMIT;
    deadline := pg_catalog.clock_timestamp() + timeout;
    LOOP
        SELECT r.status, r.vec::text, r.response::text, r.error, r.claimed_by
        INTO status, vec, response, error, claimer
        FROM ml.rpc r WHERE r.id = rid;
        EXIT WHEN status IN ('done', 'error');
        IF pg_catalog.clock_timestamp() > deadline THEN
            DELETE FROM ml.rpc r WHERE r.id = rid;
            status := 'timeout';
            RETURN;
        END IF;
        IF status = 'running' AND claimer IS DISTINCT FROM waited THEN
            -- a worker computes the answer and holds the request's lock until it has written it
            waited := claimer;
            PERFORM pg_catalog.set_config('lock_timeout', pg_catalog.ceil(1 + 1000 * extract(epoch FROM
                deadline - pg_catalog.clock_timestamp()))::bigint::text || 'ms', true);
            BEGIN
                PERFORM pg_catalog.pg_advisory_lock_shared(1885827699, (rid % 2147483648)::int);
                PERFORM pg_catalog.pg_advisory_unlock_shared(1885827699, (rid % 2147483648)::int);
            EXCEPTION WHEN lock_not_available THEN
                NULL;  -- the deadline check ends the wait
            END;
            polls := 0;  -- the reply commits just after the lock is released: poll quickly again
            CONTINUE;
        END IF;
        polls := polls + 1;
        -- pg_sleep below 1 ms spins; spin briefly (fast models answer in well under a millisecond),
        -- then sleep 1 ms, growing with the wait (1% of it, at most 10 ms): a poll every millisecond
        -- during a 200 ms forward pass takes CPU from the model on a small machine and slowed it by ~5%.
        PERFORM pg_catalog.pg_sleep(CASE WHEN polls <= 8 THEN 0.00025 ELSE least(0.01, greatest(0.001,
            0.01 * extract(epoch FROM pg_catalog.clock_timestamp() - (deadline - timeout)))) END);
    END LOOP;
    DELETE FROM ml.rpc r WHERE r.id = rid;
END $$;

CREATE OR REPLACE FUNCTION ml._rpc(op text, model text, payload jsonb, image bytea, timeout interval DEFAULT NULL,
                                   OUT vec text, OUT response text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, ml AS $$
DECLARE
    conn text := ml._loopback();
    wait interval := coalesce(timeout, ml.setting('rpc_timeout')::interval);
    st text;
    err text;
    alive int;
BEGIN
    SELECT r.status, r.vec, r.response, r.error INTO st, vec, response, err
    FROM dblink(conn, format('CALL ml._rpc_call(%L, %L, %L::jsonb, %L::bytea, %L::interval)',
                             op, model, payload, image, wait))
         AS r(status text, vec text, response text, error text);
    IF st = 'timeout' THEN
        SELECT count(*) INTO alive FROM ml.workers
        WHERE heartbeat_at > now() - ml.setting('worker_timeout')::interval;
        RAISE EXCEPTION 'pgsight: no worker answered % for model % within %', op, coalesce(model, '-'), wait
            USING ERRCODE = 'query_canceled',
                  HINT = CASE WHEN alive = 0 THEN 'no pgsight worker is running: start one with `pgsight worker`'
                         ELSE format('%s worker(s) alive but busy; raise the timeout with SET pgsight.rpc_timeout = ''30s''', alive) END;
    ELSIF st = 'error' THEN
        RAISE EXCEPTION 'pgsight: %', err;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION ml._rpc_json(op text, model text, payload jsonb, image bytea,
                                        timeout interval DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml AS $$
    SELECT (ml._rpc(op, model, payload, image, timeout)).response::jsonb
$$;

-- The query embedding of (model, input), cached for the session: the planner evaluates a STABLE
-- function in ORDER BY several times per query, and users repeat searches.
CREATE OR REPLACE FUNCTION ml._embed(modality text, model_name text, input text, image bytea) RETURNS vector
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public, ml AS $$
DECLARE
    m ml.models;
    mods text[];
    cache_key text;
    slot text;
    cached text;
    v text;
BEGIN
    SELECT * INTO m FROM ml.models WHERE name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: no model named %', coalesce(quote_literal(model_name), 'NULL')
            USING HINT = 'see SELECT name, kind FROM ml.models';
    END IF;
    SELECT k.modalities INTO mods FROM ml.model_kinds k WHERE k.kind = m.kind;
    IF NOT modality = ANY (mods) OR (SELECT outputs FROM ml.model_kinds k WHERE k.kind = m.kind) <> 'embedding' THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) does not embed %s', model_name, m.kind, modality
            USING HINT = CASE WHEN modality = 'text' THEN 'use ml.embed_image, or a model of kind clip for text'
                              ELSE 'use a model that embeds images' END;
    END IF;
    cache_key := md5(concat_ws(E'\x1f', modality, model_name, m.version, input, md5(image)));
    slot := 'pgsight.cache_' || (('x' || substr(cache_key, 1, 2))::bit(8)::int % 16);
    cached := current_setting(slot, true);
    IF cached IS NOT NULL AND left(cached, 32) = cache_key THEN
        RETURN substr(cached, 34)::vector;
    END IF;
    v := (ml._rpc('embed', model_name,
                  jsonb_build_object('modality', modality, 'input', input, 'version', m.version), image)).vec;
    PERFORM set_config(slot, cache_key || ':' || v, false);
    RETURN v::vector;
END $$;

CREATE OR REPLACE FUNCTION ml.embed_image(model text, image text) RETURNS vector
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT ml._embed('image', model, image, NULL)
$$;

CREATE OR REPLACE FUNCTION ml.embed_image(model text, image bytea) RETURNS vector
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT ml._embed('image', model, NULL, image)
$$;

CREATE OR REPLACE FUNCTION ml.embed_text(model text, input text) RETURNS vector
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT ml._embed('text', model, input, NULL)
$$;

-- Visual question answering at query time: the top k answers with their scores.
CREATE OR REPLACE FUNCTION ml._answers(model_name text, input text, image bytea, question text, k int)
RETURNS TABLE (answer text, score real)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    m ml.models;
BEGIN
    SELECT * INTO m FROM ml.models WHERE name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: no model named %', coalesce(quote_literal(model_name), 'NULL');
    END IF;
    IF (SELECT outputs FROM ml.model_kinds mk WHERE mk.kind = m.kind) <> 'answer' THEN
        RAISE EXCEPTION 'pgsight: model % (kind %) does not answer questions', model_name, m.kind
            USING HINT = 'use a model of kind vilt';
    END IF;
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'pgsight: k must be at least 1, got %', k;
    END IF;
    RETURN QUERY
    SELECT a->>'answer', (a->>'score')::real
    FROM jsonb_array_elements(ml._rpc_json('answer', model_name,
            jsonb_build_object('input', input, 'question', question, 'k', k, 'version', m.version), image)) AS a;
END $$;

CREATE OR REPLACE FUNCTION ml.answers(model text, image text, question text, k int DEFAULT 5)
RETURNS TABLE (answer text, score real)
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT * FROM ml._answers(model, image, NULL, question, k)
$$;

CREATE OR REPLACE FUNCTION ml.answers(model text, image bytea, question text, k int DEFAULT 5)
RETURNS TABLE (answer text, score real)
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT * FROM ml._answers(model, NULL, image, question, k)
$$;

CREATE OR REPLACE FUNCTION ml.answer(model text, image text, question text) RETURNS text
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT answer FROM ml._answers(model, image, NULL, question, 1)
$$;

CREATE OR REPLACE FUNCTION ml.answer(model text, image bytea, question text) RETURNS text
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml AS $$
    SELECT answer FROM ml._answers(model, NULL, image, question, 1)
$$;

-- Worker side.
-- The claimer takes each request's advisory lock (session level) and keeps it until ml.rpc_reply, or
-- until its connection ends: the caller sleeps on it (see ml._rpc_call).
CREATE OR REPLACE FUNCTION ml.rpc_claim(worker bigint, n int) RETURNS SETOF ml.rpc
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml AS $$
DECLARE
    r ml.rpc;
BEGIN
    FOR r IN UPDATE ml.rpc x SET status = 'running', claimed_by = worker
             FROM (SELECT id FROM ml.rpc WHERE status = 'pending' ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) c
             WHERE x.id = c.id
             RETURNING x.* LOOP
        PERFORM pg_advisory_lock(1885827699, (r.id % 2147483648)::int);
        RETURN NEXT r;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION ml.rpc_reply(ids bigint[], vecs vector[], responses jsonb[], errors text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, ml AS $$
BEGIN
    UPDATE ml.rpc r SET status = CASE WHEN v.error IS NULL THEN 'done' ELSE 'error' END,
        vec = v.vec, response = v.response, error = v.error
    FROM unnest(ids, vecs, responses, errors) AS v(id, vec, response, error)
    WHERE r.id = v.id;
    PERFORM pg_advisory_unlock(1885827699, (i % 2147483648)::int) FROM unnest(ids) AS i
    WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                  AND l.classid = 1885827699 AND l.objid = (i % 2147483648) AND l.mode = 'ExclusiveLock');
END $$;
