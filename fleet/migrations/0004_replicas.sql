-- Replicas (docs/fleet.md "Replicas"): replicas split one device's telemetry between them,
-- so the export's progress remembers which of the 64 samples below the highest were
-- written too (bit i: last_seq - 1 - i), not only the highest. Rows written before this
-- migration were written in order: everything below them was written.

ALTER TABLE export_progress ADD COLUMN written_below BIGINT NOT NULL DEFAULT -1;
