-- Why a document is quarantined, as a stable machine code (empty, invalid-encoding, binary, encrypted-pdf,
-- memory-limit, time-limit, ...) next to the human reason. Rows quarantined before this migration keep NULL.
ALTER TABLE ingest.quarantine ADD COLUMN reason_code text;
