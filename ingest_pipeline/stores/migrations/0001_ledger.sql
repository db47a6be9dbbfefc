-- The ledger: uploads (append-only log), documents, encrypted chunks, quarantine.
CREATE TABLE ingest.uploads (
    upload_id      bigserial PRIMARY KEY,
    tenant_id      text        NOT NULL,
    doc_id         uuid        NOT NULL,
    doc_name       text        NOT NULL,
    content_sha256 text,                    -- NULL for a deletion
    size_bytes     bigint,
    is_delete      boolean     NOT NULL DEFAULT false,
    uploaded_at    timestamptz NOT NULL DEFAULT now(),
    partition_month text       NOT NULL      -- Dagster month partition key, e.g. 2026-11-01
);
CREATE INDEX uploads_partition_idx ON ingest.uploads (tenant_id, partition_month);
CREATE INDEX uploads_doc_idx ON ingest.uploads (doc_id, upload_id DESC);

CREATE TABLE ingest.documents (
    doc_id          uuid PRIMARY KEY,
    tenant_id       text        NOT NULL,
    doc_name        text        NOT NULL,
    upload_id       bigint      NOT NULL REFERENCES ingest.uploads,
    partition_month text        NOT NULL,
    content_sha256  text,                   -- the content the chunks were made from
    status          text        NOT NULL CHECK (status IN ('registered', 'chunked', 'quarantined', 'deleted')),
    chunk_count     integer     NOT NULL DEFAULT 0,
    token_count     integer     NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_partition_idx ON ingest.documents (tenant_id, partition_month, status);

CREATE TABLE ingest.chunks (
    chunk_id             uuid PRIMARY KEY,
    tenant_id            text        NOT NULL,
    doc_id               uuid        NOT NULL REFERENCES ingest.documents ON DELETE CASCADE,
    sequence             integer     NOT NULL,
    token_count          integer     NOT NULL,
    text_mac             bytea       NOT NULL,  -- HMAC of the text under the tenant's MAC key
    text_ciphertext      bytea       NOT NULL,  -- AES-256-GCM: nonce || ciphertext || tag
    embedding_ciphertext bytea,
    key_version          integer     NOT NULL,
    state                text        NOT NULL CHECK (state IN ('chunked', 'embedded', 'indexed', 'stale')),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (doc_id, sequence)
);
CREATE INDEX chunks_tenant_state_idx ON ingest.chunks (tenant_id, state);

CREATE TABLE ingest.quarantine (
    tenant_id      text        NOT NULL,
    doc_id         uuid        NOT NULL,
    content_sha256 text        NOT NULL,
    doc_name       text        NOT NULL,
    upload_id      bigint      NOT NULL REFERENCES ingest.uploads,
    reason         text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doc_id, content_sha256)
);

CREATE TABLE ingest.embedding_log (
    tenant_id   text        NOT NULL,
    chunk_count integer     NOT NULL,
    embedded_at timestamptz NOT NULL DEFAULT now()
);
