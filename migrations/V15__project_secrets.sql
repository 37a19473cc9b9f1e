-- Project secrets (issue 19). One row per (project, name): the current
-- value, sealed with the RDEV_ENCRYPTION_KEYS ring (column
-- `project_secrets.value`, see shared/src/crypto.rs), and its version,
-- which only grows: a delete keeps the row (value NULL, deleted_at set) so a
-- later set continues the numbering and the audit log's "command X used
-- version N" stays unambiguous. Values are never returned by the API.
CREATE TABLE project_secrets (
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    value text,
    set_by_key_id uuid,
    set_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    PRIMARY KEY (project_id, name),
    CHECK ((value IS NULL) = (deleted_at IS NOT NULL))
);

-- Which secrets a project's commands may name (NULL = any of its secrets).
ALTER TABLE projects ADD COLUMN allowed_secrets text[];

-- What a command asked for: secret names as environment variables, and
-- secret names mapped to file paths (relative, under /run/secrets inside the
-- sandbox). Names only; values are resolved by the worker when it runs the
-- command, so a rotation applies to every command that starts after it.
ALTER TABLE commands ADD COLUMN secrets text[] NOT NULL DEFAULT '{}';
ALTER TABLE commands ADD COLUMN secret_files jsonb NOT NULL DEFAULT '{}'::jsonb;
