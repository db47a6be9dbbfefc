-- Where each chunk came from (its page and section path), sealed like its text with the tenant's data key under
-- the row's key version and seal format (core/crypto.py: VectorEncryptor.encrypt_citation). NULL for chunks
-- stored before citations were kept: their citation is unknown and shown empty until their document changes.
ALTER TABLE ingest.chunks ADD COLUMN citation_ciphertext bytea;
