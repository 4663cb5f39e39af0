-- What `\dn+` and `\dt+ ml.*` say: the schemas and tables of pgsight. Function comments stand next
-- to each function in its file. Idempotent; the tables of later revisions are commented once they exist.

COMMENT ON SCHEMA ml IS
    'pgsight: models, derived columns, training and query-time calls. The functions here are the API '
    '(\df+ ml.*); helpers are in ml_private, the worker''s plumbing in ml_internal.';

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('ml.settings', 'Defaults (max_attempts, lease, worker_timeout, index ...); a session overrides one with '
                        'SET pgsight.<key>. Read with ml.setting(key).'),
        ('ml.loopback', 'Where the loopback connection (query-time calls, ml.wait, evaluation) logs in. No privileges: '
                        'it may hold a password.'),
        ('ml.model_kinds', 'The kinds of model the workers know: modality, metric, training options and their defaults.'),
        ('ml.models', 'Registered models (ml.load_model, ml.build_model): kind, source, options, dimension, version, owner.'),
        ('ml.blobs', 'Files in the database: trained weights and checkpoints in chunks, for every worker.'),
        ('ml.tasks', 'Derived columns (ml.create_embedding, ml.create_prediction, ml.create_classification) and their state.'),
        ('ml.workers', 'Registered workers and their heartbeats (see ml.status_workers).'),
        ('ml.jobs', 'Backfills, training and evaluation jobs: status, progress, result (see ml.status_jobs, ml.wait).'),
        ('ml.queue', 'Rows waiting for a worker (see ml.status_backlog).'),
        ('ml.errors', 'Per-row failures: the row''s result stays NULL (see ml.status_errors).'),
        ('ml.rpc', 'Query-time requests (ml.embed_image, ml.embed_text, ml.answer ...) while a worker answers them.'),
        ('ml.schema_info', 'The digest of the function files this database last got (pgsight migrate).')
    ) AS t(tbl, text) LOOP
        IF to_regclass(c.tbl) IS NOT NULL THEN
            EXECUTE format('COMMENT ON TABLE %s IS %L', c.tbl, c.text);
        END IF;
    END LOOP;
END $$;
