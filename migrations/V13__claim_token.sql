-- Issue 15: a claim whose commit succeeded but whose reply was lost (the
-- connection dropped) left the command `running` with no process until the
-- reaper failed it. The worker now claims with a token of its own; when its
-- retry finds the command running under that token, the claim was its own
-- and it runs the command. Expand-only: older binaries ignore the column.
ALTER TABLE commands ADD COLUMN claim_token uuid;
