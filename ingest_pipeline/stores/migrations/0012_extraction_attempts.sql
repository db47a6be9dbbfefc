-- How many times in a row the extraction of a document's current bytes ended with no verdict (its worker killed
-- from outside, the pipe to it broken): after a few, the document is quarantined as crashed under the memory limit
-- in force, so one document that the host's out-of-memory killer always stops cannot hold its partition back.
ALTER TABLE ingest.documents ADD COLUMN extraction_attempts smallint NOT NULL DEFAULT 0;
