-- One row per tenant: proof of the master key it was written with, and the model that embedded it.
CREATE TABLE ingest.tenants (
    tenant_id       text PRIMARY KEY,
    key_check       bytea       NOT NULL,  -- HMAC under the tenant's MAC key: proves the key, reveals nothing
    embedding_model text,                  -- fingerprint of the model that made the tenant's embeddings
    created_at      timestamptz NOT NULL DEFAULT now()
);
