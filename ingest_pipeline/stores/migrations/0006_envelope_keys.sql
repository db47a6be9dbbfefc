-- Envelope encryption: each tenant's keys are random, stored wrapped under the master key in the key vault
-- (a separate database, see keystore.py), so data keys can be rotated and a tenant crypto-shredded. This table
-- is the ledger's register of those keys: which versions exist, never their bytes. Version 0 is the tenant's
-- MAC and index keys; versions 1, 2, ... its data keys.
-- Tenants written before this migration have keys derived from the master key (scheme 'derived'): the first
-- process that holds the master key wraps them into the vault as they are, so nothing is re-encrypted or
-- re-embedded; `origin` keeps saying they were derived (a master-key holder can derive them again).
CREATE TABLE ingest.tenant_keys (
    tenant_id   text        NOT NULL REFERENCES ingest.tenants ON DELETE CASCADE,
    key_version integer     NOT NULL CHECK (key_version >= 0),
    scheme      text        NOT NULL CHECK (scheme IN ('derived', 'wrapped', 'destroyed')),
    origin      text        NOT NULL DEFAULT 'random' CHECK (origin IN ('derived', 'random')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key_version)
);

ALTER TABLE ingest.tenants ADD COLUMN data_key_version integer NOT NULL DEFAULT 1;

INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme, origin)
SELECT tenant_id, 0, 'derived', 'derived' FROM ingest.tenants
UNION
SELECT tenant_id, 1, 'derived', 'derived' FROM ingest.tenants
UNION
SELECT DISTINCT c.tenant_id, c.key_version, 'derived', 'derived'
FROM ingest.chunks c JOIN ingest.tenants t USING (tenant_id);

-- A row can only be written under a registered key, and a key cannot be retired while a row still needs it.
ALTER TABLE ingest.chunks ADD CONSTRAINT chunks_key_fk
    FOREIGN KEY (tenant_id, key_version) REFERENCES ingest.tenant_keys (tenant_id, key_version);

-- Erasure: requested, keys destroyed (the point of no return), finished. Kept after the tenant's rows are gone.
CREATE TABLE ingest.tenant_erasures (
    tenant_id         text PRIMARY KEY,
    requested_at      timestamptz NOT NULL DEFAULT now(),
    keys_destroyed_at timestamptz,
    completed_at      timestamptz
);
