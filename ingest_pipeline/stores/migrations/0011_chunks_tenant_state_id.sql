-- The asset checks read a bounded random sample of a tenant's indexed chunks as short runs of consecutive chunk
-- ids after random starting ids (chunk ids are uuid5 hashes); this index makes each run a range scan of the
-- tenant's own rows, whatever the size of the table.
CREATE INDEX chunks_tenant_state_id_idx ON ingest.chunks (tenant_id, state, chunk_id);
