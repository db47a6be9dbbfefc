-- The format each document's text was extracted as (core.formats.DOCUMENT_FORMATS: "pdf", "docx", ..., "image"),
-- recorded when it is chunked; search filters on it inside the index. NULL: not known (chunked before this
-- migration, or never chunked).
ALTER TABLE ingest.documents ADD COLUMN format text;
