-- Containment (issue 14): a project's network mode and resource limits, and
-- the exact reason each command ended. Only added columns with constant
-- defaults: no table rewrite, no lock held beyond the catalog change, and
-- older binaries keep working against this schema (they never read them).

-- `host` (the worker's network) or `none` (a network namespace of its own).
ALTER TABLE projects ADD COLUMN network text NOT NULL DEFAULT 'host'
    CHECK (network IN ('host', 'none'));
-- Per-command limits ({"memory_bytes", "pids", "cpu_s", "file_size_bytes",
-- "open_files"}); an absent key means the server's default.
ALTER TABLE projects ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Why a terminal command ended (`exited`, `signaled`, `timed_out`,
-- `memory_limit`, …) and, for signals, which one. Null while queued or
-- running, and for commands finished before this migration (the API infers
-- theirs from status, exit code and error).
ALTER TABLE commands ADD COLUMN reason text;
ALTER TABLE commands ADD COLUMN signal integer;
