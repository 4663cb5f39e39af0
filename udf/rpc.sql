-- Query-time calls: ml.embed_image, ml.embed_text, ml.answer, ml.answers, ml.classify (udf/classify.sql).
--
-- The request is committed through the session's loopback connection (so the worker sees it at once;
-- the caller's own transaction has not committed) and the worker is woken with NOTIFY ml_rpc. The
-- caller then waits in its own backend: a VOLATILE function takes a fresh snapshot for each poll
-- (READ COMMITTED), so the STABLE ml.embed_* still see the reply, and every wait (pg_sleep, a lock)
-- is interruptible: cancel, statement_timeout and pg_terminate_backend end the call at once, and
-- nothing keeps running for it in the loopback session. (Under REPEATABLE READ or SERIALIZABLE the
-- caller's snapshot is fixed: it polls through the loopback instead, still waiting in its own backend.)
--
-- Trust: ml.rpc has no privileges for users or the loopback role; only the worker reads and writes it.
-- A request is bound to a random token that never leaves the caller's backend under READ COMMITTED
-- (only its sha256 is stored; REPEATABLE READ polls send it over the caller's own loopback): the
-- reply is read, and the request deleted, by presenting the token. The loopback may only submit for the caller's
-- role: the caller's backend signs (role, token hash) with a server secret (ml_private._rpc_ticket) and the
-- loopback's ml_private._rpc_submit checks the signature. While waiting, the caller holds an advisory lock
-- keyed by its token (`waiter`); a request whose waiter is gone (cancelled, timed out, terminated) is
-- dropped by the worker's next ml_internal.rpc_claim. While a worker computes it holds the request's advisory
-- lock (class 1885827699, key id mod 2^31, taken by ml_internal.rpc_claim and released by ml_internal.rpc_reply): the
-- caller sleeps on it instead of polling, and wakes the moment the answer is written.

-- The signature of (role, token hash) with the server secret (HMAC-like: the secret on both sides).
-- SECURITY DEFINER: only it and ml_private._rpc_submit read ml.loopback; a caller may only sign for a role
-- its session user belongs to, as ml_private._loopback_open checks.
CREATE OR REPLACE FUNCTION ml_private._rpc_ticket(who name, token_hash bytea) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    secret bytea := (SELECT l.secret FROM ml.loopback l);
BEGIN
    IF who IS NULL OR NOT pg_has_role(session_user, who, 'MEMBER') THEN
        RAISE EXCEPTION 'pgsight: % may not submit a query-time request as %', session_user, coalesce(who::text, 'NULL')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF token_hash IS NULL OR octet_length(token_hash) <> 32 THEN
        RAISE EXCEPTION 'pgsight: a query-time ticket needs the sha256 of a token'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN encode(sha256(secret || sha256(secret || convert_to(who::text, 'UTF8') || '\x00'::bytea || token_hash)), 'hex');
END $$;

-- Runs in the loopback session: record a request signed by ml_private._rpc_ticket, wake the workers.
-- SECURITY DEFINER: ml.rpc is writable by the worker only.
CREATE OR REPLACE FUNCTION ml_private._rpc_submit(op text, model text, payload jsonb, image bytea, who name,
                                          token_hash bytea, waiter bigint, ticket text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    secret bytea := (SELECT l.secret FROM ml.loopback l);
    rid bigint;
BEGIN
    IF who IS NULL OR token_hash IS NULL OR octet_length(token_hash) <> 32 OR waiter IS NULL OR ticket IS NULL
       OR ticket <> encode(sha256(secret || sha256(secret || convert_to(who::text, 'UTF8') || '\x00'::bytea
                                                   || token_hash)), 'hex') THEN
        RAISE EXCEPTION 'pgsight: query-time request refused: its ticket does not match'
            USING ERRCODE = 'insufficient_privilege', HINT = 'call ml.embed_image, ml.embed_text or ml.answer';
    END IF;
    IF op IS NULL OR op NOT IN ('embed', 'answer', 'describe', 'classify', 'generate') OR payload IS NULL THEN
        RAISE EXCEPTION 'pgsight: unknown query-time request %', coalesce(quote_literal(op), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO ml.rpc (op, model, payload, image, owner, token_hash, waiter)
    VALUES (op, model, payload, image, who, token_hash, waiter) RETURNING id INTO rid;
    PERFORM pg_notify('ml_rpc', rid::text);
    RETURN rid;
END $$;

-- The state of a request, for whoever presents its token (found by its waiter key). VOLATILE: a fresh
-- snapshot at every call.
CREATE OR REPLACE FUNCTION ml_private._rpc_state(waiter bigint, token text, OUT id bigint, OUT status text, OUT vec text,
                                         OUT response text, OUT error text, OUT claimed_by bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    SELECT r.id, r.status, r.vec::text, r.response::text, r.error, r.claimed_by
    INTO id, status, vec, response, error, claimed_by
    FROM ml.rpc r WHERE r.waiter = _rpc_state.waiter AND r.token_hash = sha256(convert_to(token, 'UTF8'));
END $$;

-- Runs in the loopback session: delete a request, for whoever presents its token.
CREATE OR REPLACE FUNCTION ml_private._rpc_forget(rid bigint, token text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    DELETE FROM ml.rpc r WHERE r.id = rid AND r.token_hash = sha256(convert_to(token, 'UTF8'));
END $$;

-- The caller's side of a query-time call. The submit is sent without waiting for its answer: the
-- caller starts polling at once (the loopback's answer is read as soon as it has come).
CREATE OR REPLACE FUNCTION ml_private._rpc(op text, model text, payload jsonb, image bytea, timeout interval DEFAULT NULL,
                                   OUT vec text, OUT response text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    wait interval := coalesce(timeout, ml.setting('rpc_timeout')::interval);
    own_snapshot boolean := current_setting('transaction_isolation') = 'read committed';
    token text := gen_random_uuid()::text || gen_random_uuid()::text;  -- 244 random bits, never sent
    hash bytea;
    waiter bigint;
    conn text;
    rid bigint;
    st text;
    err text;
    claimer bigint;
    waited bigint;
    deadline timestamptz;
    polls int := 0;
    in_dblink boolean := false;  -- the loopback connection has a statement whose answer is not read yet
    submitted boolean := false;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ml.workers w
                   WHERE w.heartbeat_at > pg_catalog.clock_timestamp() - ml.setting('worker_timeout')::interval) THEN
        RAISE EXCEPTION 'pgsight: no worker answered % for model %: none is running', op, coalesce(model, '-')
            USING ERRCODE = 'query_canceled', HINT = 'no pgsight worker is running: start one with `pgsight worker`';
    END IF;
    hash := sha256(convert_to(token, 'UTF8'));
    waiter := ('x' || left(encode(hash, 'hex'), 16))::bit(64)::bigint;
    conn := ml_private._loopback();
    BEGIN  -- a subtransaction: the locks taken here are released when it ends (see the RAISE below)
        PERFORM pg_advisory_xact_lock(waiter);  -- "someone waits for this request"
        in_dblink := true;
        PERFORM public.dblink_send_query(conn, format(
            'SELECT ml_private._rpc_submit(%L, %L, %L::jsonb, %L::bytea, %L, %L::bytea, %s, %L)', op, model, payload,
            image, current_user, hash, waiter, ml_private._rpc_ticket(current_user, hash)));
        deadline := pg_catalog.clock_timestamp() + wait;
        LOOP
            IF in_dblink AND (NOT own_snapshot OR st IN ('done', 'error', 'timeout') OR public.dblink_is_busy(conn) = 0) THEN
                -- the submit has answered (committed): read its answer; a refusal is raised here
                PERFORM 1 FROM public.dblink_get_result(conn) AS t(id bigint);
                PERFORM 1 FROM public.dblink_get_result(conn) AS t(id bigint);
                in_dblink := false;
                submitted := true;
            END IF;
            IF own_snapshot THEN
                SELECT r.id, r.status, r.vec, r.response, r.error, r.claimed_by INTO rid, st, vec, response, err, claimer
                FROM ml_private._rpc_state(waiter, token) r;
            ELSE
                in_dblink := true;
                SELECT r.id, r.status, r.vec, r.response, r.error, r.claimed_by INTO rid, st, vec, response, err, claimer
                FROM public.dblink(conn, format('SELECT * FROM ml_private._rpc_state(%s, %L)', waiter, token))
                     AS r(id bigint, status text, vec text, response text, error text, claimed_by bigint);
                in_dblink := false;
            END IF;
            IF st IN ('done', 'error') THEN
                CONTINUE WHEN in_dblink;  -- read the submit's answer first
                EXIT;
            END IF;
            EXIT WHEN st IS NULL AND submitted;  -- it vanished (an administrator deleted it)
            IF pg_catalog.clock_timestamp() > deadline THEN
                st := 'timeout';
                CONTINUE WHEN in_dblink;
                EXIT;
            END IF;
            IF st = 'running' AND claimer IS DISTINCT FROM waited THEN
                -- a worker computes the answer and holds the request's lock until it has written it
                waited := claimer;
                PERFORM pg_catalog.set_config('lock_timeout', pg_catalog.ceil(1 + 1000 * extract(epoch FROM
                    deadline - pg_catalog.clock_timestamp()))::bigint::text || 'ms', true);
                BEGIN
                    PERFORM pg_catalog.pg_advisory_xact_lock_shared(1885827699, (rid % 2147483648)::int);
                EXCEPTION WHEN lock_not_available THEN
                    NULL;  -- the deadline check ends the wait
                END;
                polls := 0;  -- the reply commits just after the lock is released: poll quickly again
                CONTINUE;
            END IF;
            polls := polls + 1;
            -- pg_sleep below 1 ms spins; spin briefly (fast models answer in well under a millisecond),
            -- then sleep 1 ms, growing with the wait (1% of it, at most 10 ms).
            PERFORM pg_catalog.pg_sleep(CASE WHEN polls <= 8 THEN 0.00025 ELSE least(0.01, greatest(0.001,
                0.01 * extract(epoch FROM pg_catalog.clock_timestamp() - (deadline - wait)))) END);
        END LOOP;
        RAISE SQLSTATE 'PGR00';  -- leave the block: its locks and its lock_timeout go with it
    EXCEPTION
        WHEN SQLSTATE 'PGR00' THEN
            NULL;
        WHEN query_canceled THEN  -- cancel or statement_timeout: with no waiter, the worker drops it
            BEGIN
                IF in_dblink THEN  -- interrupted mid-call: that connection is busy, take a fresh one
                    PERFORM public.dblink_disconnect(conn);
                    conn := ml_private._loopback();
                END IF;
                IF rid IS NOT NULL THEN
                    PERFORM 1 FROM public.dblink(conn, format('SELECT ml_private._rpc_forget(%s, %L)', rid, token)) AS t(x text);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                NULL;  -- the worker drops it anyway: nobody waits for it
            END;
            RAISE;
        WHEN OTHERS THEN
            IF in_dblink THEN  -- e.g. the submit was refused: leave a clean connection for the next call
                PERFORM public.dblink_disconnect(conn);
            END IF;
            RAISE;
    END;
    IF rid IS NOT NULL THEN
        PERFORM 1 FROM public.dblink(conn, format('SELECT ml_private._rpc_forget(%s, %L)', rid, token)) AS t(x text);
    END IF;
    IF st = 'timeout' OR st IS NULL THEN
        RAISE EXCEPTION 'pgsight: no worker answered % for model % within %', op, coalesce(model, '-'), wait
            USING ERRCODE = 'query_canceled',
                  HINT = 'the live workers are busy; raise the timeout with SET pgsight.rpc_timeout = ''30s''';
    ELSIF st = 'error' THEN
        RAISE EXCEPTION 'pgsight: %', err;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION ml_private._rpc_json(op text, model text, payload jsonb, image bytea,
                                        timeout interval DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT (ml_private._rpc(op, model, payload, image, timeout)).response::jsonb
$$;

-- The query embedding of (model, input), cached for the session: the planner evaluates a STABLE
-- function in ORDER BY several times per query, and users repeat searches.
CREATE OR REPLACE FUNCTION ml_private._embed(modality text, model_name text, input text, image bytea) RETURNS vector
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
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
    -- updated_at too: a model dropped and registered again under its name starts at version 1 again
    cache_key := md5(concat_ws(E'\x1f', modality, model_name, m.version, extract(epoch FROM m.updated_at), input,
                               md5(image)));
    slot := 'pgsight.cache_' || (('x' || substr(cache_key, 1, 2))::bit(8)::int % 16);
    cached := current_setting(slot, true);
    IF cached IS NOT NULL AND left(cached, 32) = cache_key THEN
        RETURN substr(cached, 34)::public.vector;
    END IF;
    v := (ml_private._rpc('embed', model_name,
                  jsonb_build_object('modality', modality, 'input', input, 'version', m.version), image)).vec;
    PERFORM set_config(slot, cache_key || ':' || v, false);
    RETURN v::public.vector;
END $$;

CREATE OR REPLACE FUNCTION ml.embed_image(model text, image text) RETURNS vector
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._embed('image', model, image, NULL)
$$;
COMMENT ON FUNCTION ml.embed_image(text, text) IS
    'embed_image(model, image path or URL) -> vector. Computed by a worker at query time (for search).';

CREATE OR REPLACE FUNCTION ml.embed_image(model text, image bytea) RETURNS vector
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._embed('image', model, NULL, image)
$$;
COMMENT ON FUNCTION ml.embed_image(text, bytea) IS
    'embed_image(model, image bytes) -> vector. Computed by a worker at query time.';

CREATE OR REPLACE FUNCTION ml.embed_text(model text, input text) RETURNS vector
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._embed('text', model, input, NULL)
$$;
COMMENT ON FUNCTION ml.embed_text(text, text) IS
    'embed_text(model, text) -> vector. Computed by a worker at query time (text-to-image search with CLIP).';

-- Visual question answering at query time: the top k answers with their scores.
CREATE OR REPLACE FUNCTION ml_private._answers(model_name text, input text, image bytea, question text, k int)
RETURNS TABLE (answer text, score real)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    m ml.models;
BEGIN
    SELECT * INTO m FROM ml.models WHERE name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsight: no model named %', coalesce(quote_literal(model_name), 'NULL');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ml.model_kinds mk WHERE mk.kind = m.kind AND mk.outputs = 'answer'
                   AND mk.modalities @> '{image,text}') THEN  -- a captioner generates from the image alone
        RAISE EXCEPTION 'pgsight: model % (kind %) does not answer questions', model_name, m.kind
            USING HINT = CASE WHEN ml_private._generates(m.kind) THEN 'use ml.generate' ELSE 'use a model of kind vilt' END;
    END IF;
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'pgsight: k must be at least 1, got %', k;
    END IF;
    RETURN QUERY
    SELECT a->>'answer', (a->>'score')::real
    FROM jsonb_array_elements(ml_private._rpc_json('answer', model_name,
            jsonb_build_object('input', input, 'question', question, 'k', k, 'version', m.version), image)) AS a;
END $$;

CREATE OR REPLACE FUNCTION ml.answers(model text, image text, question text, k int DEFAULT 5)
RETURNS TABLE (answer text, score real)
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT * FROM ml_private._answers(model, image, NULL, question, k)
$$;
COMMENT ON FUNCTION ml.answers(text, text, text, integer) IS
    'answers(model, image path or URL, question, k DEFAULT 5) -> the k best (answer, score), best first (VQA).';

CREATE OR REPLACE FUNCTION ml.answers(model text, image bytea, question text, k int DEFAULT 5)
RETURNS TABLE (answer text, score real)
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT * FROM ml_private._answers(model, NULL, image, question, k)
$$;
COMMENT ON FUNCTION ml.answers(text, bytea, text, integer) IS
    'answers(model, image bytes, question, k DEFAULT 5) -> the k best (answer, score), best first (VQA).';

CREATE OR REPLACE FUNCTION ml.answer(model text, image text, question text) RETURNS text
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT answer FROM ml_private._answers(model, image, NULL, question, 1)
$$;
COMMENT ON FUNCTION ml.answer(text, text, text) IS
    'answer(model, image path or URL, question) -> the best answer (VQA).';

CREATE OR REPLACE FUNCTION ml.answer(model text, image bytea, question text) RETURNS text
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT answer FROM ml_private._answers(model, NULL, image, question, 1)
$$;
COMMENT ON FUNCTION ml.answer(text, bytea, text) IS
    'answer(model, image bytes, question) -> the best answer (VQA).';

-- Worker side.
-- The claimer takes each request's advisory lock (session level) and keeps it until ml_internal.rpc_reply, or
-- until its connection ends: the caller sleeps on it (see ml_private._rpc).
CREATE OR REPLACE FUNCTION ml_internal.rpc_claim(worker bigint, n int) RETURNS SETOF ml.rpc
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    r ml.rpc;
BEGIN
    -- requests nobody waits for any more (the caller was cancelled, timed out or ended): drop them
    DELETE FROM ml.rpc x WHERE x.waiter IS NOT NULL AND pg_try_advisory_xact_lock_shared(x.waiter);
    FOR r IN UPDATE ml.rpc x SET status = 'running', claimed_by = worker
             FROM (SELECT id FROM ml.rpc WHERE status = 'pending' ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) c
             WHERE x.id = c.id
             RETURNING x.* LOOP
        PERFORM pg_advisory_lock(1885827699, (r.id % 2147483648)::int);
        RETURN NEXT r;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION ml_internal.rpc_reply(ids bigint[], vecs vector[], responses jsonb[], errors text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
BEGIN
    UPDATE ml.rpc r SET status = CASE WHEN v.error IS NULL THEN 'done' ELSE 'error' END,
        vec = v.vec, response = v.response, error = v.error
    FROM unnest(ids, vecs, responses, errors) AS v(id, vec, response, error)
    WHERE r.id = v.id;
    PERFORM pg_advisory_unlock(1885827699, (i % 2147483648)::int) FROM unnest(ids) AS i
    WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                  AND l.classid = 1885827699 AND l.objid = (i % 2147483648) AND l.mode = 'ExclusiveLock');
END $$;
