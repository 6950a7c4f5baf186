-- Chunk bytes the service published to each device of a deployment: with delta transfers
-- a device that holds an earlier version receives only what changed, and this is how much
-- that was. Added to by the sender, apart from the row's revision (a count, not a step).
ALTER TABLE deployment_devices ADD COLUMN bytes_sent BIGINT NOT NULL DEFAULT 0;
