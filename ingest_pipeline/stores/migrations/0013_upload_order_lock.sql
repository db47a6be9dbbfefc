-- The upload-order lock gets a class of its own (ingest_pipeline/stores/locks.py: UPLOAD_ORDER): until now it was
-- key 1 of the class the tenant locks use (keyed by hashtext(tenant)), so a tenant whose hash was 1 shared it.
-- Same function, same semantics: the id is drawn under a transaction-scoped lock held until commit.
CREATE OR REPLACE FUNCTION ingest.uploads_in_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7537, 0);
    NEW.upload_id := nextval(pg_get_serial_sequence('ingest.uploads', 'upload_id'));
    RETURN NEW;
END
$$;
