"""The work itself, free of Dagster: uploads, the landing-zone scan, embedding, indexing, search,
reconciliation, re-encryption and erasure. Assets, jobs and the CLI call it."""
