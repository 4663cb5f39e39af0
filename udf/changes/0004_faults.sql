-- Run-once schema changes for fault isolation.
--   * a task records the attribute numbers of its key, source and result columns, so that renames
--     are followed (the names are refreshed from them), and a state: 'ok', or 'failing' with the
--     error and a backoff (not_before) when the whole task cannot be served (a table-level problem:
--     a privilege revoked, a lock held, a user trigger that refuses every write ...);
--   * settings for the finite default of ml.wait and the task backoff cap;
--   * the autonomous-commit setting is gone: create_* and build_model run in the caller's transaction.

ALTER TABLE ml.tasks
    ADD COLUMN key_attnum    smallint,
    ADD COLUMN source_attnum smallint,
    ADD COLUMN result_attnum smallint,
    ADD COLUMN state         text NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'failing')),
    ADD COLUMN error         text,
    ADD COLUMN failures      int NOT NULL DEFAULT 0,
    ADD COLUMN not_before    timestamptz,
    ADD COLUMN failed_at     timestamptz;

UPDATE ml.tasks t SET
    key_attnum    = (SELECT attnum FROM pg_attribute WHERE attrelid = t.table_name AND attname = t.key_col),
    source_attnum = (SELECT attnum FROM pg_attribute WHERE attrelid = t.table_name AND attname = t.source_col),
    result_attnum = (SELECT attnum FROM pg_attribute WHERE attrelid = t.table_name AND attname = t.result_col);

INSERT INTO ml.settings (key, value) VALUES
    ('wait_timeout', '10 minutes'),     -- ml.wait(job) and ml.wait(job, NULL) give up after this
    ('task_backoff_max', '1 minute')    -- a failing task is retried at least this often
ON CONFLICT (key) DO NOTHING;
DELETE FROM ml.settings WHERE key = 'autonomous';
DROP FUNCTION IF EXISTS ml._may_commit_alone();
DROP FUNCTION IF EXISTS ml._locked_by_me(regclass);
DROP FUNCTION IF EXISTS ml._loopback_is(text);
