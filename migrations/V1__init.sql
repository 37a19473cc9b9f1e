-- rdev initial schema. Forward-only: never edit an applied migration, add a new one.

CREATE TABLE projects (
    id                uuid PRIMARY KEY,
    name              text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    description       text NOT NULL DEFAULT '',
    executor          jsonb NOT NULL,
    env               jsonb NOT NULL DEFAULT '{}'::jsonb,
    default_timeout_s integer NOT NULL CHECK (default_timeout_s > 0),
    max_output_bytes  bigint NOT NULL CHECK (max_output_bytes > 0),
    max_concurrency   integer CHECK (max_concurrency > 0),
    allowed_commands  text[],
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz
);
-- A deleted project's name can be reused.
CREATE UNIQUE INDEX projects_name_live ON projects (name) WHERE deleted_at IS NULL;

CREATE TABLE api_keys (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    prefix            text NOT NULL,
    secret_hash       bytea NOT NULL UNIQUE,
    scopes            text[] NOT NULL,
    project_ids       uuid[],
    allowed_ips       cidr[],
    rate_limit_requests integer,
    rate_limit_window_s integer,
    expires_at        timestamptz,
    revoked_at        timestamptz,
    last_used_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE commands (
    id              uuid PRIMARY KEY,            -- uuid v7: time-ordered
    project_id      uuid NOT NULL REFERENCES projects (id),
    api_key_id      uuid REFERENCES api_keys (id),
    command         text,
    argv            text[],
    env             jsonb NOT NULL DEFAULT '{}'::jsonb,
    stdin           bytea,
    priority        smallint NOT NULL CHECK (priority BETWEEN 0 AND 9),
    status          text NOT NULL CHECK (status IN ('queued','running','succeeded','failed','timed_out','cancelled')),
    exit_code       integer,
    error           text,
    timeout_s       integer NOT NULL CHECK (timeout_s > 0),
    idempotency_key text,
    worker_id       text,
    attempt         integer NOT NULL DEFAULT 0,
    heartbeat_at    timestamptz,
    output_bytes    bigint NOT NULL DEFAULT 0,
    truncated       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    CHECK ((command IS NULL) <> (argv IS NULL))
);
CREATE UNIQUE INDEX commands_idempotency ON commands (api_key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_project ON commands (project_id, id DESC);
CREATE INDEX commands_status ON commands (status, id DESC);
-- The reaper scans running commands by heartbeat.
CREATE INDEX commands_running_heartbeat ON commands (heartbeat_at) WHERE status = 'running';

CREATE TABLE command_output (
    command_id uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    stream     text NOT NULL CHECK (stream IN ('stdout','stderr')),
    data       bytea NOT NULL CHECK (octet_length(data) <= 65536),
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (command_id, seq)
);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    exchange     text NOT NULL,
    routing_key  text NOT NULL,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority     smallint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- The relay only looks at what is still unpublished.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_key_id uuid,
    actor        text NOT NULL,
    ip           inet,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text,
    project_id   uuid,
    outcome      text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);

-- Append-only: the audit log can be trimmed by retention (DELETE) but never rewritten.
CREATE FUNCTION audit_log_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_no_update();

CREATE TABLE rate_limits (
    key_id       uuid NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
