-- Webhook endpoints, their deliveries (one per endpoint and event) and every
-- HTTP attempt of a delivery. Forward-only.

CREATE TABLE webhooks (
    id              uuid PRIMARY KEY,
    url             text NOT NULL,
    secret          text NOT NULL,
    events          text[] NOT NULL CHECK (cardinality(events) > 0),
    project_id      uuid REFERENCES projects (id),   -- null = every project
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    -- Start of the current run of failed attempts; null while healthy.
    failing_since   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Soft delete: deliveries and attempts stay readable for the audit trail.
    deleted_at      timestamptz
);
CREATE INDEX webhooks_live ON webhooks (id) WHERE deleted_at IS NULL;
-- Fan-out looks up the live, enabled endpoints.
CREATE INDEX webhooks_fanout ON webhooks (project_id) WHERE deleted_at IS NULL AND enabled;

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,            -- uuid v7: time-ordered
    webhook_id       uuid NOT NULL REFERENCES webhooks (id),
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    payload          bytea NOT NULL,               -- the exact bytes signed and sent
    -- W3C trace context of the event, so the attempt joins the command's trace.
    trace_headers    jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL CHECK (status IN ('pending','succeeded','failed','dead')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Index into the retry schedule is `attempts - retry_base`; recovery
    -- starts a fresh schedule by moving the base.
    retry_base       integer NOT NULL DEFAULT 0,
    -- A manual redelivery of a finished delivery gets one attempt, no retries.
    single_attempt   boolean NOT NULL DEFAULT false,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when a dispatcher claims the delivery; the attempt is recorded only
    -- by the holder of the current lease, so no attempt is counted twice.
    lease_token      uuid,
    last_status_code integer,
    last_error       text,
    last_duration_ms integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id)
);
-- The due-delivery scan: status = 'pending' AND next_attempt_at <= now().
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- Listing an endpoint's deliveries, newest first, optionally by status.
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_by_webhook_status ON webhook_deliveries (webhook_id, status, id DESC);

CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at               timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    duration_ms      integer NOT NULL,
    error            text,
    response_excerpt text CHECK (octet_length(response_excerpt) <= 20480)
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
