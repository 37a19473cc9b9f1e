-- Access control and accountability (issue 4): audit filters, rate-limit retention.

-- `GET /v1/audit` filters by actor, action and project, newest first (id order).
CREATE INDEX audit_log_actor ON audit_log (actor_key_id, id DESC);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_project ON audit_log (project_id, id DESC);

-- Each counter row remembers its window length, so retention can delete rows
-- older than two of their own windows without knowing the key's settings.
ALTER TABLE rate_limits ADD COLUMN window_s integer NOT NULL DEFAULT 60 CHECK (window_s > 0);
CREATE INDEX rate_limits_window_start ON rate_limits (window_start);
-- Counters are disposable: no WAL, so a request does not wait for a disk flush.
-- A crash or failover resets them (everyone gets a fresh window), which is acceptable.
ALTER TABLE rate_limits SET UNLOGGED;

ALTER TABLE api_keys ADD CONSTRAINT api_keys_rate_limit_both
    CHECK ((rate_limit_requests IS NULL) = (rate_limit_window_s IS NULL));
