-- The agent process (a random id it picks at start) whose stream holds a
-- node's row: a Hello from another instance is refused while that stream
-- is live; the same instance reconnecting takes over at once.
ALTER TABLE nodes ADD COLUMN instance TEXT NOT NULL DEFAULT '';
-- The configuration the node's agent applied but could not save to its
-- disk (e.g. the disk is full), since when, and why; NULL when saved.
ALTER TABLE nodes ADD COLUMN persist_revision BIGINT;
ALTER TABLE nodes ADD COLUMN persist_error TEXT;
ALTER TABLE nodes ADD COLUMN persist_at_ms BIGINT;
