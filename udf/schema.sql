-- pgsight: the tables of the `ml` schema. Run once, by the first migration; later migrations
-- change tables with their own run-once files. Functions live in the other udf/*.sql files,
-- which are idempotent (CREATE OR REPLACE) and re-applied by every migration.

CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE SCHEMA IF NOT EXISTS ml;

-- Defaults that a session can override with `SET pgsight.<key> = ...`.
CREATE TABLE ml.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO ml.settings (key, value) VALUES
    ('rpc_timeout',    '10 seconds'),   -- query-time calls (ml.embed_*, ml.answer) give up after this
    ('lease',          '10 minutes'),   -- a claimed batch is handed to another worker after this
    ('worker_timeout', '15 seconds'),   -- a worker without heartbeat for this long is dead
    ('max_attempts',   '5'),            -- transient failures of a row before it is dead-lettered
    ('autonomous',     'on'),           -- create_embedding/build_model commit on their own when they can
    ('index',          'auto'),         -- HNSW index of embedding columns: auto | now | off
    ('index_defer_rows', '1000');       -- auto: backfills this large build the index once, at the end

-- Where the loopback connection (autonomous commits, query-time calls) logs in. Empty: as the
-- calling role, over the server's first unix socket. Otherwise a libpq key=value string without
-- dbname, e.g. 'host=/var/run/postgresql user=pgsight_loopback password=...', and the role it logs
-- in as. No privileges are granted on this table: it may hold a password.
CREATE TABLE ml.loopback (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    conninfo text NOT NULL DEFAULT '',
    role     text
);
INSERT INTO ml.loopback DEFAULT VALUES;

-- The kinds of model the workers know. Training options are validated against `train_options`
-- (keys and default values) before a job is queued.
CREATE TABLE ml.model_kinds (
    kind          text PRIMARY KEY,
    modalities    text[] NOT NULL,
    outputs       text NOT NULL CHECK (outputs IN ('embedding', 'answer')),
    metric        text NOT NULL DEFAULT 'cosine' CHECK (metric IN ('cosine', 'l2', 'ip')),
    train_options jsonb,             -- NULL: this kind cannot be trained with ml.build_model
    description   text NOT NULL
);

CREATE TABLE ml.models (
    name       text PRIMARY KEY,
    kind       text NOT NULL REFERENCES ml.model_kinds,
    source     text,                  -- hub id, local directory (as the worker sees it), or NULL when stored
    status     text NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'training', 'failed')),
    dim        int,
    metric     text NOT NULL DEFAULT 'cosine',
    options    jsonb NOT NULL DEFAULT '{}',
    info       jsonb NOT NULL DEFAULT '{}',   -- labels, training metrics, ...
    stored     boolean NOT NULL DEFAULT false, -- weights live in ml.blobs under model/<name>/<version>/
    version    int NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Files (model weights, checkpoints) chunked into bytea rows, so that every worker on every machine
-- can load a model trained anywhere. key: 'model/<name>/<version>/<path>' or 'job/<id>/<path>'.
CREATE TABLE ml.blobs (
    key   text NOT NULL,
    chunk int  NOT NULL,
    data  bytea NOT NULL,
    PRIMARY KEY (key, chunk)
);
-- Weights are float noise to pglz: skipping its (futile) compression attempt halves write time.
ALTER TABLE ml.blobs ALTER COLUMN data SET STORAGE EXTERNAL;

-- A derived column of a user table: an embedding (vector) or a prediction (answer + score).
CREATE TABLE ml.tasks (
    id          serial PRIMARY KEY,
    table_name  regclass NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('embedding', 'prediction')),
    model       text NOT NULL REFERENCES ml.models ON UPDATE CASCADE,
    source_col  text NOT NULL,
    result_col  text NOT NULL,
    modality    text NOT NULL DEFAULT 'image',
    question    text,
    key_col     text NOT NULL,
    key_type    text NOT NULL,
    index_name  text,
    index_state text NOT NULL DEFAULT 'none' CHECK (index_state IN ('none', 'pending', 'ready')),
    model_version int,                -- the model version the column is computed with (set by each backfill)
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (table_name, result_col)
);

CREATE TABLE ml.workers (
    id           bigserial PRIMARY KEY,
    hostname     text NOT NULL,
    pid          int NOT NULL,
    device       text NOT NULL,
    info         jsonb NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ml.jobs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('backfill', 'train', 'evaluate')),
    model       text,
    table_name  text,
    task_id     int,
    status      text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    done        bigint NOT NULL DEFAULT 0,   -- rows (or steps) finished, failed ones included
    failed      bigint NOT NULL DEFAULT 0,
    retried     bigint NOT NULL DEFAULT 0,   -- rows claimed more than once (a worker died or a batch failed)
    total       bigint,
    error       text,
    params      jsonb NOT NULL DEFAULT '{}',
    progress    jsonb NOT NULL DEFAULT '{}', -- epoch, loss, rows/s ...
    result      jsonb,
    attempts    int NOT NULL DEFAULT 0,
    claimed_by  bigint,
    lease_until timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
CREATE INDEX jobs_open_idx ON ml.jobs (id) WHERE status IN ('queued', 'running');

-- Rows waiting for a worker. No foreign keys: this table takes 10k+ inserts a second.
CREATE TABLE ml.queue (
    id          bigserial PRIMARY KEY,
    task_id     int NOT NULL,
    key         text NOT NULL,
    job_id      bigint,
    attempts    int NOT NULL DEFAULT 0,
    not_before  timestamptz,
    lease_until timestamptz,
    claimed_by  bigint,
    last_error  text,
    queued_at   timestamptz NOT NULL DEFAULT now()   -- for the backlog's oldest-pending age (ml.status_backlog)
);
CREATE INDEX queue_task_idx ON ml.queue (task_id, id);
CREATE INDEX queue_job_idx ON ml.queue (job_id) WHERE job_id IS NOT NULL;

-- Per-row failures: the row's result stays NULL, the rest of its batch is written.
CREATE TABLE ml.errors (
    id          bigserial PRIMARY KEY,
    task_id     int,
    job_id      bigint,
    table_name  text,
    row_key     text,
    column_name text,
    model       text,
    error       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX errors_task_idx ON ml.errors (task_id);

-- Query-time requests (ml.embed_image, ml.embed_text, ml.answer ...), answered by a worker.
CREATE UNLOGGED TABLE ml.rpc (
    id         bigserial PRIMARY KEY,
    op         text NOT NULL,
    model      text,
    payload    jsonb NOT NULL DEFAULT '{}',
    image      bytea,
    status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'error')),
    vec        vector,
    response   jsonb,
    error      text,
    claimed_by bigint,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rpc_pending_idx ON ml.rpc (id) WHERE status = 'pending';
