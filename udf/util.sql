-- Settings, identifier checks and the loopback connection used for autonomous work.

-- A setting: the session's `pgsight.<key>` if set, else ml.settings.
CREATE OR REPLACE FUNCTION ml.setting(key text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, ml AS $$
    SELECT coalesce(nullif(current_setting('pgsight.' || key, true), ''),
                    (SELECT s.value FROM ml.settings s WHERE s.key = setting.key))
$$;

-- Names of models and result columns: plain identifiers only, so they are safe everywhere.
CREATE OR REPLACE FUNCTION ml._check_name(what text, name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pgsight: invalid % name %: use letters, digits and _ (at most 63, not starting with a digit)',
            what, coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'invalid_name';
    END IF;
    RETURN name;
END $$;

-- A connection string back to this database, for work that must commit on its own
-- (ml.create_embedding inside `SELECT ml.wait(...)`) and for query-time requests.
CREATE OR REPLACE FUNCTION ml._loopback_connstr() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ml AS $$
DECLARE
    configured text := ml.setting('loopback');
    sockdir text := split_part(current_setting('unix_socket_directories'), ',', 1);
BEGIN
    IF configured IS NOT NULL AND configured <> '' THEN
        RETURN configured || format(' dbname=%s', quote_ident(current_database()));
    END IF;
    RETURN format('host=%s port=%s dbname=%s user=%s application_name=pgsight_loopback',
                  coalesce(nullif(trim(sockdir), ''), 'localhost'), current_setting('port'),
                  quote_ident(current_database()), quote_ident(current_user));
END $$;

-- Open (or reuse) this session's named loopback connection. The connection is kept for the
-- session: opening one costs ~5 ms, a call on an open one ~0.1 ms.
CREATE OR REPLACE FUNCTION ml._loopback() RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, ml AS $$
DECLARE
    conn text := 'pgsight_' || current_user;
BEGIN
    IF conn = ANY (coalesce(dblink_get_connections(), '{}')) THEN
        -- a server restart leaves a dead connection behind: probe it cheaply
        IF dblink_error_message(conn) = 'OK' THEN
            RETURN conn;
        END IF;
        PERFORM dblink_disconnect(conn);
    END IF;
    BEGIN
        PERFORM dblink_connect(conn, ml._loopback_connstr());
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgsight: cannot open the loopback connection to this database: %', SQLERRM
            USING HINT = 'set ml.settings ''loopback'' to a libpq connection string that reaches this server';
    END;
    RETURN conn;
END $$;

-- Run one statement in its own transaction (committed when it returns) and give back its
-- single text result.
CREATE OR REPLACE FUNCTION ml._autonomous(stmt text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, ml AS $$
DECLARE
    conn text := ml._loopback();
    result text;
BEGIN
    SELECT r INTO result FROM dblink(conn, stmt) AS t(r text);
    RETURN result;
END $$;

-- True when this session's transaction holds a lock on the table (it created, altered or read it):
-- then autonomous DDL on the table would wait for us forever, so the work runs in our transaction.
CREATE OR REPLACE FUNCTION ml._locked_by_me(tbl regclass) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT EXISTS (SELECT 1 FROM pg_locks
                   WHERE pid = pg_backend_pid() AND locktype = 'relation'
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND relation = tbl)
$$;

-- The schema pgvector was installed in (usually public): DDL names its type and operator classes
-- with it, so functions keep a pinned search_path.
CREATE OR REPLACE FUNCTION ml._vector_schema() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector'
$$;
