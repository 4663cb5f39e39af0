-- Run-once schema changes for fault isolation. Placeholder until that work lands.
SELECT 1;
