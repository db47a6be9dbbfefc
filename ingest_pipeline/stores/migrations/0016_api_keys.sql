-- Tenant-scoped API keys of the search service. Only a SHA-256 of each key is kept (the key is 256 random bits,
-- so a plain hash cannot be reversed by guessing); `key_id` is the non-secret prefix embedded in the key, by which
-- it is looked up. A revoked key keeps its row (listing shows when and why); `revoked_reason` 'erased' marks the
-- keys of an erased tenant, which the service answers with 410 instead of 401.
CREATE TABLE IF NOT EXISTS ingest.api_keys (
    key_id text PRIMARY KEY,
    tenant_id text NOT NULL,
    label text,
    key_hash bytea NOT NULL,
    rate_per_s double precision,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    revoked_reason text
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON ingest.api_keys (tenant_id);
