-- The worker acts on a user table with the rights of the table's owner, never its own. User code
-- that the worker's reads and writes fire (a trigger, a row-level security policy, a column default,
-- a constraint or index expression ...) would otherwise run as the worker's login role, which
-- writes every ml table (or as a superuser). So the statements on a user table (the claim's lock
-- probe and read, the write-back, the stale check, clearing a failed row's result) run inside
-- ml_owner."u<owner oid>": a SECURITY DEFINER function owned by the table's owner, created by
-- pgsight (ml_private._owner_fn) with a fixed body. Inside it SET ROLE / SET SESSION AUTHORIZATION are refused
-- by PostgreSQL, so user code cannot climb back to the worker's role; an event trigger refuses any
-- change to the functions of ml_owner by anyone but a superuser (the owner could otherwise make its
-- function SECURITY INVOKER between the worker's check and its call), and the worker checks owner
-- and SECURITY DEFINER before each call (docs/security.md).
-- Without a superuser to migrate (no event trigger, no ALTER ... OWNER TO the tenant), the worker
-- keeps acting with its own rights and says so in a warning (docs/security.md, "Known limits").

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'ml_owner') THEN
        CREATE SCHEMA ml_owner;
    END IF;
    REVOKE ALL ON SCHEMA ml_owner FROM PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pgsight: cannot create schema ml_owner: the worker will act on user tables with its own rights';
END $$;

-- The statements themselves, with the rights of whoever calls it (the table's owner through its
-- ml_owner function; the worker itself when it owns the table or has no such function). Only what
-- the worker needs: op 'probe' (take the table's lock), 'read' (sources of keys, in order), 'write'
-- (results of rows not held by anyone, whose source is unchanged: the keys written), 'unchanged'
-- (which of the indexes `ints` still have the source hash given), 'lock' (lock the row of keys[1] now,
-- or raise lock_not_available), 'clear' (NULL the result of keys[1]),
-- 'index' (the task's HNSW index with pgvector's operator class keys[1]: ml_private._create_index).
CREATE OR REPLACE FUNCTION ml_private._user_table_op(t ml.tasks, op text, keys text[] DEFAULT NULL, hashes text[] DEFAULT NULL,
                                             vecs vector[] DEFAULT NULL, answers text[] DEFAULT NULL,
                                             scores real[] DEFAULT NULL, ints int[] DEFAULT NULL)
RETURNS TABLE (got boolean[], texts text[], bytes bytea[], src_hashes text[], out_ints int[], wrote text[],
               rls boolean, reader name)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    is_bytea boolean;
    -- the key type's own `=` where an extension defines it (citext ...); else pg_catalog's
    -- (a user's public.= (varchar, varchar) must not win: docs/security.md)
    eq text := coalesce((SELECT format('OPERATOR(%I.=)', n.nspname)
                         FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
                         JOIN pg_operator o ON o.oprname = '=' AND o.oprleft = ty.oid AND o.oprright = ty.oid
                              AND o.oprnamespace = ty.typnamespace AND o.oprowner = ty.typowner
                         JOIN pg_namespace n ON n.oid = o.oprnamespace
                         WHERE a.attrelid = t.table_name AND a.attnum = t.key_attnum LIMIT 1), 'OPERATOR(pg_catalog.=)');
    vec text := (SELECT format('%I.vector', n.nspname) FROM pg_extension e
                 JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector');
    -- The statements on the user's table run with the names a session of its owner has by default: a
    -- trigger of the owner's fired by them (plpgsql without its own search_path) finds its tables as
    -- it does in the owner's sessions. Every name in the statements themselves is qualified.
    user_path constant text := '"$user", public, pg_temp';
    stmt text;
BEGIN
    reader := current_user;
    IF op = 'probe' THEN
        EXECUTE format('SELECT FROM %s LIMIT 0', t.table_name);
    ELSIF op = 'read' THEN
        is_bytea := (SELECT atttypid = 'bytea'::regtype FROM pg_attribute
                     WHERE attrelid = t.table_name AND attnum = t.source_attnum);
        -- LATERAL: one primary-key lookup per row, whatever the table's size (a hash join would scan it)
        stmt := format(
            'SELECT pg_catalog.array_agg(x.found IS NOT NULL ORDER BY q.ord), pg_catalog.array_agg(x.src_text ORDER BY q.ord),
                    pg_catalog.array_agg(x.src_bytes ORDER BY q.ord), pg_catalog.array_agg(x.src_hash ORDER BY q.ord)
             FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS q(key, ord)
             LEFT JOIN LATERAL (SELECT true AS found, %s AS src_text, %s AS src_bytes, pg_catalog.md5(y.%I) AS src_hash
                                FROM %s y WHERE y.%I %s q.key::%s LIMIT 1) x ON true',
            CASE WHEN is_bytea THEN 'NULL::text' ELSE format('y.%I::text', t.source_col) END,
            CASE WHEN is_bytea THEN format('y.%I', t.source_col) ELSE 'NULL::bytea' END,
            t.source_col, t.table_name, t.key_col, eq, t.key_type);
        PERFORM pg_catalog.set_config('search_path', user_path, true);
        EXECUTE stmt INTO got, texts, bytes, src_hashes USING keys;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, ml, pg_temp', true);
        rls := row_security_active(t.table_name);
    ELSIF op = 'write' THEN
        -- one statement: lock the rows no one else holds (SKIP LOCKED), write those whose source is
        -- unchanged; out_ints: the positions of the keys whose rows it locked (a locked row not written
        -- with its source unchanged was skipped by the table: a BEFORE UPDATE trigger returned NULL)
        stmt := format(
            'WITH l AS (SELECT y.%I AS k FROM %s y WHERE y.%I %s ANY ($1::%s[]) FOR UPDATE SKIP LOCKED),
                  v AS MATERIALIZED (SELECT v.* FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::%s[]),
                                                          pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::real[]))
                                     WITH ORDINALITY AS v(key, h, vec, answer, score, ord)
                                     WHERE v.key::%s %s ANY (SELECT l.k FROM l)),
                  w AS (UPDATE %s x SET %s FROM v
                        WHERE x.%I %s v.key::%s AND x.%I %s ANY ($1::%s[]) AND pg_catalog.md5(x.%I) IS NOT DISTINCT FROM v.h
                        RETURNING v.key)
             SELECT coalesce(pg_catalog.array_agg(w.key), ''{}''), (SELECT pg_catalog.array_agg(v.ord::int) FROM v) FROM w',
            t.key_col, t.table_name, t.key_col, eq, t.key_type, vec, t.key_type, eq, t.table_name,
            CASE WHEN t.kind = 'embedding' THEN format('%I = v.vec', t.result_col)
                 ELSE format('%I = v.answer, %I = v.score', t.result_col, t.result_col || '_score') END,
            t.key_col, eq, t.key_type, t.key_col, eq, t.key_type, t.source_col);
        PERFORM pg_catalog.set_config('search_path', user_path, true);
        EXECUTE stmt INTO wrote, out_ints USING keys, hashes, vecs, answers, scores;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, ml, pg_temp', true);
    ELSIF op = 'unchanged' THEN
        stmt := format('SELECT pg_catalog.array_agg(q.i) FROM ROWS FROM (pg_catalog.unnest($1::int[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS q(i, key, h) '
                       'WHERE EXISTS (SELECT FROM %s y WHERE y.%I %s q.key::%s AND pg_catalog.md5(y.%I) IS NOT DISTINCT FROM q.h)',
                       t.table_name, t.key_col, eq, t.key_type, t.source_col);
        PERFORM pg_catalog.set_config('search_path', user_path, true);
        EXECUTE stmt INTO out_ints USING ints, keys, hashes;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, ml, pg_temp', true);
        rls := row_security_active(t.table_name);
    ELSIF op = 'lock' THEN  -- got[1]: the row of keys[1] is locked now (NULL: not visible to a locking read)
        stmt := format('SELECT pg_catalog.array_agg(true) FROM (SELECT FROM %s y WHERE y.%I %s $1::%s FOR UPDATE NOWAIT) s',
                       t.table_name, t.key_col, eq, t.key_type);
        PERFORM pg_catalog.set_config('search_path', user_path, true);
        EXECUTE stmt INTO got USING keys[1];
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, ml, pg_temp', true);
    ELSIF op = 'clear' THEN
        stmt := format('UPDATE %s x SET %I = NULL%s WHERE x.%I %s $1::%s AND x.%I IS NOT NULL', t.table_name,
                       t.result_col, CASE WHEN t.kind = 'prediction'
                                          THEN format(', %I = NULL', t.result_col || '_score') ELSE '' END,
                       t.key_col, eq, t.key_type, t.result_col);
        PERFORM pg_catalog.set_config('search_path', user_path, true);
        EXECUTE stmt USING keys[1];
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, ml, pg_temp', true);
    ELSIF op = 'index' THEN
        -- only the task's own index name and column, and one of pgvector's HNSW operator classes
        IF NOT coalesce(keys[1] = ANY (ARRAY['vector_l2_ops', 'vector_ip_ops', 'vector_cosine_ops', 'halfvec_l2_ops',
                                             'halfvec_ip_ops', 'halfvec_cosine_ops']), false) THEN
            RAISE EXCEPTION 'pgsight: % is not an HNSW operator class pgsight builds', coalesce(keys[1], 'NULL');
        END IF;
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (%I %s.%s)', t.index_name, t.table_name,
                       t.result_col, (SELECT quote_ident(n.nspname) FROM pg_extension e
                                      JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'),
                       keys[1]);
    ELSE
        RAISE EXCEPTION 'pgsight: unknown operation %', op;
    END IF;
    RETURN NEXT;
END $$;

-- A task, for the owner of its table (`who`, the current_user of ml_private._owner_exec): only asked from a
-- worker's session or a session of that role (the task's names are not shown to other roles).
CREATE OR REPLACE FUNCTION ml_private._owner_task(tid int, who name) RETURNS ml.tasks
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    t ml.tasks;
BEGIN
    IF NOT (pg_has_role(session_user, who, 'MEMBER')
            OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_worker')
                AND pg_has_role(session_user, 'pgsight_worker', 'MEMBER'))) THEN
        RETURN NULL;
    END IF;
    t := ml_private._task(tid);
    IF t.id IS NULL OR (SELECT relowner FROM pg_class WHERE oid = t.table_name)
                       IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = who) THEN
        RETURN NULL;
    END IF;
    RETURN t;
END $$;

-- The body of every ml_owner function, run as the table's owner.
CREATE OR REPLACE FUNCTION ml_private._owner_exec(tid int, op text, keys text[], hashes text[], vecs vector[], answers text[],
                                          scores real[], ints int[])
RETURNS TABLE (got boolean[], texts text[], bytes bytea[], src_hashes text[], out_ints int[], wrote text[],
               rls boolean, reader name)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    t ml.tasks := ml_private._owner_task(tid, current_user);
BEGIN
    IF t.id IS NULL THEN
        RAISE EXCEPTION 'pgsight: task % is not on a table of role %', tid, current_user;
    END IF;
    RETURN QUERY SELECT * FROM ml_private._user_table_op(t, op, keys, hashes, vecs, answers, scores, ints);
END $$;

-- (Re)create ml_owner."u<owner>" owned by `owner` (SECURITY DEFINER: the ml owner creates it and gives
-- it away). Only for a role that owns the table of a task; the body is fixed. false when it cannot
-- (no schema ml_owner, not a superuser): the caller then acts with its own rights.
CREATE OR REPLACE FUNCTION ml_private._owner_fn(role_oid oid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    fn text := 'u' || role_oid;
    vec text := (SELECT format('%I.vector', extnamespace::regnamespace) FROM pg_extension WHERE extname = 'vector');
    sig text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'ml_owner')
       OR NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgsight_owner_fn' AND evtenabled <> 'D')
       OR NOT EXISTS (SELECT 1 FROM ml.tasks t JOIN pg_class c ON c.oid = t.table_name WHERE c.relowner = role_oid) THEN
        RETURN false;
    END IF;
    -- one at a time per owner (two workers serving the same new owner): the second finds it made
    PERFORM pg_advisory_xact_lock(hashtextextended('pgsight ml_owner ' || role_oid, 0));
    IF EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'ml_owner'::regnamespace AND p.proname = fn
               AND p.prosecdef AND p.proowner = role_oid) THEN
        RETURN true;
    END IF;
    sig := format('ml_owner.%I(int, text, text[], text[], %s[], text[], real[], int[])', fn, vec);
    EXECUTE format('DROP FUNCTION IF EXISTS %s', sig);
    EXECUTE format(
        'CREATE FUNCTION ml_owner.%I(tid int, op text, keys text[], hashes text[], vecs %s[], answers text[],
                                     scores real[], ints int[])
         RETURNS TABLE (got boolean[], texts text[], bytes bytea[], src_hashes text[], out_ints int[], wrote text[],
                        rls boolean, reader name)
         LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp
         AS %L', fn, vec, 'SELECT * FROM ml_private._owner_exec(tid, op, keys, hashes, vecs, answers, scores, ints)');
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', sig);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsight_worker') THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgsight_worker', sig);
    END IF;
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', sig, role_oid::regrole::text);
    RETURN true;
EXCEPTION WHEN insufficient_privilege THEN  -- the ml owner is not a superuser: the documented fallback
    RETURN false;
END $$;

-- The worker's one way into a user table: as its owner (through the owner's ml_owner function,
-- checked before each call), or with its own rights when it owns the table itself or no such
-- function can exist (a warning says so).
CREATE OR REPLACE FUNCTION ml_private._as_owner(t ml.tasks, op text, keys text[] DEFAULT NULL, hashes text[] DEFAULT NULL,
                                        vecs vector[] DEFAULT NULL, answers text[] DEFAULT NULL,
                                        scores real[] DEFAULT NULL, ints int[] DEFAULT NULL)
RETURNS TABLE (got boolean[], texts text[], bytes bytea[], src_hashes text[], out_ints int[], wrote text[],
               rls boolean, reader name)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    owner_oid oid := (SELECT relowner FROM pg_class WHERE oid = t.table_name);
    fn text := 'u' || owner_oid;
BEGIN
    IF owner_oid = (SELECT oid FROM pg_roles WHERE rolname = current_user) THEN
        RETURN QUERY SELECT * FROM ml_private._user_table_op(t, op, keys, hashes, vecs, answers, scores, ints);
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'ml_owner' AND p.proname = fn AND p.prosecdef AND p.proowner = owner_oid)
       AND NOT ml_private._owner_fn(owner_oid) THEN
        RAISE WARNING 'pgsight: acting on % with the worker''s own rights (role %): no function ml_owner.% owned by its owner (migrate as a superuser; docs/security.md)',
            t.table_name, current_user, fn;
        RETURN QUERY SELECT * FROM ml_private._user_table_op(t, op, keys, hashes, vecs, answers, scores, ints);
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format('SELECT * FROM ml_owner.%I($1, $2, $3, $4, $5, $6, $7, $8)', fn)
        USING t.id, op, keys, hashes, vecs, answers, scores, ints;
END $$;

-- Nobody but a superuser changes a function of ml_owner: its owner (the tenant) could otherwise
-- replace it, or make it SECURITY INVOKER, between the worker's check and its call.
CREATE OR REPLACE FUNCTION ml_private._on_owner_fn_ddl() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c WHERE c.schema_name = 'ml_owner')
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'pgsight: the functions of schema ml_owner are pgsight''s; they cannot be changed by %', current_user;
    END IF;
END $$;

DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgsight_owner_fn') THEN
        CREATE EVENT TRIGGER pgsight_owner_fn ON ddl_command_end
            WHEN TAG IN ('CREATE FUNCTION', 'ALTER FUNCTION', 'CREATE PROCEDURE', 'ALTER PROCEDURE', 'ALTER ROUTINE')
            EXECUTE FUNCTION ml_private._on_owner_fn_ddl();
    END IF;
END $$;
