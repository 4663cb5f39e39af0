-- Run-once schema changes for the trust boundary (ownership, row-level security). Placeholder
-- until that work lands: a revision with nothing to change.
SELECT 1;
