-- Desired-state deployments. The same rules as 0001: TEXT and BIGINT only, times as BIGINT
-- milliseconds since the Unix epoch, bytes as hex TEXT (the Any driver has no portable
-- BLOB/BYTEA type name).

-- One row per deployment: the signed command exactly as the operator made it (the service
-- relays it and cannot forge one), what it installs, and where it goes.
CREATE TABLE deployments (
    id               TEXT PRIMARY KEY,   -- the command id, hex
    target_kind      TEXT NOT NULL,      -- 'device' | 'group'
    target           TEXT NOT NULL,      -- device id or group name
    model            TEXT NOT NULL,
    version          TEXT NOT NULL,
    transfer_id      TEXT NOT NULL,      -- hex; repair requests name it
    artifact_sha256  TEXT NOT NULL,      -- hex; the file in [artifacts] dir
    artifact_bytes   BIGINT NOT NULL,
    command          TEXT NOT NULL,      -- the signed Command, postcard, hex
    cancel_command   TEXT,               -- the signed Cancel, hex, once cancelled
    state            TEXT NOT NULL,      -- active | completed | superseded | cancelled | expired
    superseded_by    TEXT,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,    -- the command's expires_at
    updated_at       BIGINT NOT NULL
);
CREATE INDEX deployments_by_state ON deployments (state);
CREATE INDEX deployments_by_transfer ON deployments (transfer_id);

-- One row per (deployment, device) the deployment has met: what `edgectl deployments
-- watch` reads. `rev` counts updates: a writer updates only the revision it read, so two
-- replicas handling the same device never overwrite each other's step.
CREATE TABLE deployment_devices (
    deployment  TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    device      TEXT NOT NULL,
    state       TEXT NOT NULL,
    progress    BIGINT,
    detail      TEXT,
    attempts    BIGINT NOT NULL,
    sent_at     BIGINT,
    updated_at  BIGINT NOT NULL,
    rev         BIGINT NOT NULL,
    PRIMARY KEY (deployment, device)
);
CREATE INDEX deployment_devices_by_device ON deployment_devices (device);
