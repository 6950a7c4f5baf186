-- Staged rollouts (src/rollouts): a group deployment handed to the members wave by wave.
-- The same rules as 0001: TEXT and BIGINT only, times as BIGINT ms, lists as JSON text.

-- Which members of a group deployment may be sent it: a JSON array of device ids, or NULL
-- for every member (now and later), as before rollouts.
ALTER TABLE deployments ADD COLUMN admitted TEXT;

-- One row per rollout, keyed by its deployment. `rev` counts updates: a replica moves a
-- rollout on only from the revision it read.
CREATE TABLE rollouts (
    id               TEXT PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    group_name       TEXT NOT NULL,
    model            TEXT NOT NULL,
    version          TEXT NOT NULL,
    spec             TEXT NOT NULL,   -- JSON: waves, gates, approve_each, wave_timeout_secs
    abort_command    TEXT NOT NULL,   -- the signed cancel, hex, relayed when a wave fails
    members          TEXT NOT NULL,   -- JSON array: the members in the order waves take them
    wave             BIGINT NOT NULL, -- the wave on trial or last judged, 0-based
    wave_started_at  BIGINT NOT NULL,
    state            TEXT NOT NULL,   -- running | awaiting_approval | completed | halted
    figures          TEXT NOT NULL,   -- JSON: the current wave's figures at the last look
    decisions        TEXT NOT NULL,   -- JSON array of decisions, oldest first
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    rev              BIGINT NOT NULL
);
CREATE INDEX rollouts_by_state ON rollouts (state);

-- Each device's last per-version figures (telemetry version 4): what a rollout's wave is
-- judged on (kept from every sample of its devices) and what `GET /v1/models/{name}/versions`
-- pools (kept once a minute from the others).
CREATE TABLE device_versions (
    device      TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     TEXT NOT NULL,
    stats       TEXT NOT NULL,   -- JSON: edge_proto::telemetry::VersionStats
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (device, model, version)
);
