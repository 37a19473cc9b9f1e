-- Access hardening (issue 16): who made each API key. Rotate and revoke
-- reach only keys the caller created (an admin reaches all). Keys made with
-- `rdev-api keys create` (or before this migration) have no creator.
ALTER TABLE api_keys ADD COLUMN created_by uuid REFERENCES api_keys (id);
CREATE INDEX api_keys_created_by ON api_keys (created_by) WHERE created_by IS NOT NULL;
