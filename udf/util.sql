-- Settings, identifier checks and the loopback connection (query-time calls, ml.wait, evaluation).

-- A setting: the session's `pgsight.<key>` if set, else ml.settings.
CREATE OR REPLACE FUNCTION ml.setting(key text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('pgsight.' || key, true), ''),
                    (SELECT s.value FROM ml.settings s WHERE s.key = setting.key))
$$;
COMMENT ON FUNCTION ml.setting(text) IS
    'setting(key) -> text: the session''s pgsight.<key> if set, else the row of ml.settings.';

-- Names of models and result columns: plain identifiers only, so they are safe everywhere.
CREATE OR REPLACE FUNCTION ml_private._check_name(what text, name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pgsight: invalid % name %: use letters, digits and _ (at most 63, not starting with a digit)',
            what, coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'invalid_name';
    END IF;
    RETURN name;
END $$;

-- Open (or reuse) the session's named loopback connection, logging in as `who` (the caller's role)
-- or as the configured loopback role. SECURITY DEFINER so that only it reads ml.loopback, which may
-- hold a password; a caller may only ask for a role it is a member of. Opening costs ~5 ms, a call on
-- an open connection ~0.1 ms, so the connection is kept for the session.
CREATE OR REPLACE FUNCTION ml_private._loopback_open(who text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    lb ml.loopback := (SELECT l FROM ml.loopback l);
    login text := coalesce(nullif(lb.role, ''), who);
    conn text := 'pgsight_' || login;
    sockdir text := split_part(current_setting('unix_socket_directories'), ',', 1);
    connstr text;
BEGIN
    IF NOT pg_has_role(session_user, who, 'MEMBER') THEN
        RAISE EXCEPTION 'pgsight: % may not open a loopback connection as %', session_user, who;
    END IF;
    IF conn = ANY (coalesce(public.dblink_get_connections(), '{}')) THEN
        RETURN conn;
    END IF;
    IF lb.conninfo <> '' THEN
        connstr := lb.conninfo || ' dbname=' || ml_internal._conninfo_quote(current_database());
    ELSE
        connstr := format('host=%s port=%s dbname=%s user=%s application_name=pgsight_loopback',
                          ml_internal._conninfo_quote(coalesce(nullif(trim(sockdir), ''), 'localhost')),
                          current_setting('port'), ml_internal._conninfo_quote(current_database()), ml_internal._conninfo_quote(who));
    END IF;
    BEGIN
        PERFORM public.dblink_connect(conn, connstr);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgsight: cannot open the loopback connection to this database as %: %', login, SQLERRM
            USING HINT = 'an administrator can point it elsewhere: UPDATE ml.loopback SET conninfo = ''host=... user=... password=...'', role = ''...''';
    END;
    RETURN conn;
END $$;

-- A libpq connection-string value, quoted.
CREATE OR REPLACE FUNCTION ml_internal._conninfo_quote(v text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '''' || replace(replace(v, E'\\', E'\\\\'), '''', E'\\''') || ''''
$$;

CREATE OR REPLACE FUNCTION ml_private._loopback() RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
    SELECT ml_private._loopback_open(current_user::text)
$$;

-- Run one statement in its own transaction (committed when it returns) and give back its
-- single text result. Used by evaluation only (it waits for its own job); create_* and build_model
-- run in the caller's transaction.
CREATE OR REPLACE FUNCTION ml_private._autonomous(stmt text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, ml, pg_temp AS $$
DECLARE
    conn text := ml_private._loopback();
    result text;
BEGIN
    SELECT r INTO result FROM public.dblink(conn, stmt) AS t(r text);
    RETURN result;
END $$;

-- The schema pgvector was installed in (usually public): DDL names its type and operator classes
-- with it, so functions keep a pinned search_path.
CREATE OR REPLACE FUNCTION ml_private._vector_schema() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector'
$$;
