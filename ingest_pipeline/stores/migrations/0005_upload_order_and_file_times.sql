-- Upload events become visible in upload_id order: the id is drawn under a transaction-scoped lock that is held
-- until commit, so no event with a smaller id can appear after a reader (the upload sensor) has paged past it.
CREATE FUNCTION ingest.uploads_in_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7534, 1);
    NEW.upload_id := nextval(pg_get_serial_sequence('ingest.uploads', 'upload_id'));
    RETURN NEW;
END
$$;
CREATE TRIGGER uploads_in_commit_order BEFORE INSERT ON ingest.uploads
    FOR EACH ROW EXECUTE FUNCTION ingest.uploads_in_commit_order();

-- The landed file's modification time when it was hashed: the sensor re-hashes a file only when its size or
-- modification time differs (equality, never a comparison with the database's clock).
ALTER TABLE ingest.uploads ADD COLUMN file_mtime_ns bigint;
