-- An erased tenant stays erased: its ingest.tenant_erasures row is a tombstone that every writer checks, until an
-- operator re-admits the tenant (`ingest-pipeline readmit-tenant`), which records who did and when.
ALTER TABLE ingest.tenant_erasures ADD COLUMN readmitted_at timestamptz, ADD COLUMN readmitted_by text;

-- Tenants written again after their erasure, before tombstones existed, stay admitted.
UPDATE ingest.tenant_erasures e SET readmitted_at = now(), readmitted_by = 'migration 0009'
WHERE e.completed_at IS NOT NULL
  AND (EXISTS (SELECT 1 FROM ingest.tenants t WHERE t.tenant_id = e.tenant_id)
       OR EXISTS (SELECT 1 FROM ingest.uploads u WHERE u.tenant_id = e.tenant_id));

-- The backstop for any writer of uploads or tenants (the pipeline checks first and says why): a tombstoned tenant
-- gets no row. The shared lock (class 7535, the tenant) is the one an erasure takes exclusively while it records
-- its request, so a row is either committed before the request (and erased with the rest) or refused.
CREATE FUNCTION ingest.refuse_erased_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7535, hashtext(NEW.tenant_id));
    IF EXISTS (SELECT 1 FROM ingest.tenant_erasures WHERE tenant_id = NEW.tenant_id AND readmitted_at IS NULL) THEN
        RAISE EXCEPTION 'tenant % was erased: nothing is written for it until `ingest-pipeline readmit-tenant` '
                        're-admits it', quote_literal(NEW.tenant_id) USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
-- Named to fire before uploads_in_commit_order, so an upload never waits here holding the upload-order lock.
CREATE TRIGGER uploads_admitted BEFORE INSERT ON ingest.uploads
    FOR EACH ROW EXECUTE FUNCTION ingest.refuse_erased_tenant();
CREATE TRIGGER tenants_admitted BEFORE INSERT ON ingest.tenants
    FOR EACH ROW EXECUTE FUNCTION ingest.refuse_erased_tenant();
