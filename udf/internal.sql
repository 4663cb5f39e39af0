-- The schemas beside ml, which holds the user API only (each function with COMMENT ON):
--   ml_internal  the worker's plumbing (claim, write-back, query-time requests, blobs, job progress ...)
--                and the helpers only it calls. Users (pgsight_user, PUBLIC) have no rights on it; the
--                worker role has (udf/privileges.sql).
--   ml_private   helpers of the user API: they run with the caller's rights (checks, triggers on user
--                tables, the loopback), or are the reviewed SECURITY DEFINER gates (docs/security.md).
--                Callable, as they were in ml, but not an API: they may change in any release.
-- Applied first: the other function files define functions in them.

CREATE SCHEMA IF NOT EXISTS ml_internal;
REVOKE ALL ON SCHEMA ml_internal FROM PUBLIC;
COMMENT ON SCHEMA ml_internal IS
    'pgsight internals: the worker''s calls. Only the worker role may use it. Not an API.';
CREATE SCHEMA IF NOT EXISTS ml_private;
REVOKE ALL ON SCHEMA ml_private FROM PUBLIC;
COMMENT ON SCHEMA ml_private IS
    'pgsight internals: helpers of the ml functions, run with the caller''s rights. Not an API.';
