-- Issue 15, finding 10: retention of what grows with every command.
-- Per-project retention of commands and of their stored output (seconds;
-- null = the dispatcher's RDEV_COMMAND_RETENTION / RDEV_OUTPUT_RETENTION).
-- `output_pruned_at` marks commands whose output retention already removed,
-- so passes do not rescan them. Expand-only: older binaries ignore these.
ALTER TABLE projects ADD COLUMN command_retention_s bigint
    CHECK (command_retention_s IS NULL OR command_retention_s > 0);
ALTER TABLE projects ADD COLUMN output_retention_s bigint
    CHECK (output_retention_s IS NULL OR output_retention_s > 0);
ALTER TABLE commands ADD COLUMN output_pruned_at timestamptz;
-- The indexes retention needs are built CONCURRENTLY by `db::indexes`
-- after migrations (refinery runs each migration in a transaction, and a
-- plain CREATE INDEX would block writes to `commands` while it builds).
