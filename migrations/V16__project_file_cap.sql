-- Issue 19: a per-project cap on one upload of the files API (bytes; null =
-- the API's RDEV_FILES_MAX_BYTES, which also caps it). Expand-only: older
-- binaries ignore it.
ALTER TABLE projects ADD COLUMN max_file_bytes bigint
    CHECK (max_file_bytes IS NULL OR max_file_bytes > 0);
