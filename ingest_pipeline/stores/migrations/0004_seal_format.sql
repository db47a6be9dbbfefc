-- Seal format 2 binds the text's MAC (the content version) into each ciphertext's associated data.
-- Rows written before it keep format 1 until their document changes.
ALTER TABLE ingest.chunks ADD COLUMN seal_format smallint NOT NULL DEFAULT 1;
ALTER TABLE ingest.chunks ALTER COLUMN seal_format SET DEFAULT 2;
