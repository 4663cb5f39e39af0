-- What `pgsight migrate` last installed: the digest of the idempotent function files, so that a
-- changed function body is re-applied to an existing database (and nothing is done when unchanged).
CREATE TABLE ml.schema_info (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    functions_sha256 text,
    applied_at       timestamptz
);
INSERT INTO ml.schema_info DEFAULT VALUES;
