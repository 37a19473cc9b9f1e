-- Issue 15: a reused Idempotency-Key with a different request is refused
-- (422) instead of answered with the original command. The fingerprint is a
-- SHA-256 of the request's canonical form; rows from before have none and
-- are replayed as before. Expand-only: older binaries ignore the column.
ALTER TABLE commands ADD COLUMN idempotency_fingerprint bytea;
