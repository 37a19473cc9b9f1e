-- A cancel request for a running command. The API sets it and broadcasts on
-- the control exchange; the worker also sees it on its next heartbeat, so a
-- cancel is honoured even if the broadcast was missed.
ALTER TABLE commands ADD COLUMN cancel_requested_at timestamptz;

-- Per-project concurrency checks count a project's running commands.
CREATE INDEX commands_project_running ON commands (project_id) WHERE status = 'running';
