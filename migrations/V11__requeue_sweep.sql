-- Issue 15: a command whose run message was lost (queue purged, broker disk
-- lost) stays `queued` forever. The dispatcher republishes commands queued
-- longer than RDEV_REQUEUE_AFTER; `requeued_at` keeps it from doing so more
-- than once per period. Expand-only: older binaries ignore the column.
ALTER TABLE commands ADD COLUMN requeued_at timestamptz;
