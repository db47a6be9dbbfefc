-- Which layout each tenant's live index generation has: 1 = vectors and metadata only (vector search),
-- 2 = also each chunk's text as a full-text field (hybrid and keyword search inside the encrypted index).
-- Tenants registered before this migration have layout-1 indexes; a rebuild moves them to layout 2.
ALTER TABLE ingest.tenants ADD COLUMN index_layout smallint NOT NULL DEFAULT 1;
ALTER TABLE ingest.tenants ALTER COLUMN index_layout SET DEFAULT 2;
