-- The stream that last wrote a node's row: a replica only marks a node
-- disconnected if its own session is still the node's current one.
ALTER TABLE nodes ADD COLUMN session BIGINT NOT NULL DEFAULT 0;
