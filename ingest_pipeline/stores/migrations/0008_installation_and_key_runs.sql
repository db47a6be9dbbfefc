-- This installation's id, made once: the key vault records it with every key this installation writes, so that
-- a second installation pointed at the same vault (or a ledger restored from an older backup) never replaces
-- another's keys (see keystore.py). A restored backup of this ledger keeps the id.
CREATE TABLE ingest.installation (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    installation_id text        NOT NULL DEFAULT gen_random_uuid()::text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ingest.installation DEFAULT VALUES;

-- The Dagster run whose rotation created a key version: a retried step reuses it instead of rotating again.
ALTER TABLE ingest.tenant_keys ADD COLUMN created_by_run text;

-- The re-encryption job pages through a tenant's rows by chunk_id.
CREATE INDEX chunks_tenant_chunk_idx ON ingest.chunks (tenant_id, chunk_id);
