-- The device inventory. Written for both SQLite and PostgreSQL: TEXT and BIGINT only,
-- timestamps as BIGINT milliseconds (or seconds, where the name says so) since the Unix
-- epoch, lists as JSON text. Flags are BIGINT 0/1: sqlx's Any driver cannot read SQLite's
-- BOOLEAN columns back.

CREATE TABLE devices (
    device          TEXT PRIMARY KEY,
    online          BIGINT NOT NULL,  -- 1 online, 0 offline
    last_seen       BIGINT,
    agent_version   TEXT,
    cert_not_after  BIGINT,  -- seconds since the Unix epoch
    updated_at      BIGINT NOT NULL
);

-- One row per (device, group): deployments to a group will select their targets here.
CREATE TABLE device_groups (
    device      TEXT NOT NULL REFERENCES devices (device) ON DELETE CASCADE,
    group_name  TEXT NOT NULL,
    PRIMARY KEY (device, group_name)
);
CREATE INDEX device_groups_by_group ON device_groups (group_name);

-- One row per (device, model): what the device reports; deployments will compare their
-- desired version with active_version here.
CREATE TABLE device_models (
    device              TEXT NOT NULL REFERENCES devices (device) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    active_version      TEXT,
    installed_versions  TEXT NOT NULL,  -- JSON array of strings, oldest first
    health              TEXT NOT NULL,
    PRIMARY KEY (device, name)
);
