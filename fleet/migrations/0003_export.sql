-- Telemetry export to Prometheus (src/export.rs): per device, the last telemetry sample
-- written through remote write, so that a sample the broker delivers again (at least once)
-- is not written twice, across restarts of the service. See src/progress.rs for the rule.

CREATE TABLE export_progress (
    device      TEXT PRIMARY KEY,
    last_seq    BIGINT NOT NULL,
    last_ts     BIGINT NOT NULL,  -- the sample's own time, milliseconds since the Unix epoch
    updated_at  BIGINT NOT NULL
);
