-- A rebuild fills a new index generation beside the live one and swaps when it is complete.
ALTER TABLE ingest.tenants
    ADD COLUMN index_generation   integer NOT NULL DEFAULT 1,  -- the generation search and ingest use
    ADD COLUMN rebuild_generation integer,                     -- the generation a rebuild is filling
    ADD COLUMN rebuild_cursor     uuid;                        -- the last chunk id it has written
