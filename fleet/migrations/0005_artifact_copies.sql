-- Replicas (docs/fleet.md "Replicas"): a copy of every uploaded artifact in the database, so
-- that any replica can serve its chunks, whichever one received the upload. Written in one
-- transaction: a row in `artifacts` means every block is there. Used only with
-- `share_group` set; one instance keeps artifacts as files only.

CREATE TABLE artifacts (
    sha256      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE artifact_blocks (
    sha256  TEXT NOT NULL,
    block   BIGINT NOT NULL,   -- position, from 0; every block but the last is 1 MiB
    data    BYTEA NOT NULL,    -- SQLite stores the bytes as a BLOB under this type name
    PRIMARY KEY (sha256, block)
);
