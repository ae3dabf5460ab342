-- The audit trail and bearer tokens.

-- Who made the write that last changed each resource, from where, and when
-- (Unix milliseconds). Empty for rows written before this migration. Kept
-- out of `body`, so that re-applying an identical resource stays unchanged.
ALTER TABLE resources ADD COLUMN changed_by    TEXT   NOT NULL DEFAULT '';
ALTER TABLE resources ADD COLUMN changed_from  TEXT   NOT NULL DEFAULT '';
ALTER TABLE resources ADD COLUMN changed_at_ms BIGINT NOT NULL DEFAULT 0;

-- The same for every change-log row: Watch shows who changed what, when.
ALTER TABLE changes ADD COLUMN principal TEXT   NOT NULL DEFAULT '';
ALTER TABLE changes ADD COLUMN address   TEXT   NOT NULL DEFAULT '';
ALTER TABLE changes ADD COLUMN at_ms     BIGINT NOT NULL DEFAULT 0;

-- Bumped by every token write, in its transaction: replicas poll it to
-- reload their token cache, so a revocation reaches all of them quickly.
ALTER TABLE meta ADD COLUMN tokens_epoch BIGINT NOT NULL DEFAULT 0;

-- Bearer tokens. Only a SHA-256 hash of the secret is kept; a revoked
-- token stays, so that its name is never given to another.
CREATE TABLE tokens (
    name          TEXT   PRIMARY KEY,
    role          TEXT   NOT NULL CHECK (role IN ('admin', 'reader', 'agent')),
    node          TEXT   NOT NULL DEFAULT '',
    hash          BLOB   NOT NULL CHECK (length(hash) = 32),
    created_at_ms BIGINT NOT NULL,
    created_by    TEXT   NOT NULL,
    revoked_at_ms BIGINT NULL
);
