-- The revisioned configuration store.

-- One row: the global revision counter and the change-log horizon. Every
-- write transaction increments `revision` first; the row lock it takes is
-- held until commit, so writers take revisions in commit order.
CREATE TABLE meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL,
    horizon  BIGINT NOT NULL
);
INSERT INTO meta (id, revision, horizon) VALUES (1, 0, 0);

-- The current state: one row per resource, its protobuf encoding in `body`.
CREATE TABLE resources (
    kind     TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    revision BIGINT NOT NULL,
    body     BYTEA  NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Which resource names which: checked on every write.
CREATE TABLE refs (
    from_kind TEXT NOT NULL,
    from_name TEXT NOT NULL,
    to_kind   TEXT NOT NULL,
    to_name   TEXT NOT NULL,
    PRIMARY KEY (from_kind, from_name, to_kind, to_name)
);
CREATE INDEX refs_to ON refs (to_kind, to_name);

-- The change log: every resource a revision touched, with its body as
-- written (NULL for deletes). Rows at or below meta.horizon are compacted.
CREATE TABLE changes (
    revision BIGINT  NOT NULL,
    seq      INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    name     TEXT    NOT NULL,
    op       TEXT    NOT NULL CHECK (op IN ('upsert', 'delete')),
    body     BYTEA,
    PRIMARY KEY (revision, seq)
);

-- Agents that have connected.
CREATE TABLE nodes (
    id               TEXT    PRIMARY KEY,
    labels           TEXT    NOT NULL, -- "key=value" lines
    agent_version    TEXT    NOT NULL,
    applied_revision BIGINT  NOT NULL DEFAULT 0,
    connected        BOOLEAN NOT NULL DEFAULT FALSE,
    replica          TEXT    NOT NULL DEFAULT '',
    last_seen_ms     BIGINT  NOT NULL,
    nack_revision    BIGINT,
    nack_error       TEXT,
    nack_at_ms       BIGINT
);
