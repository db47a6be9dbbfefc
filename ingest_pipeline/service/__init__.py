"""The HTTP search service: tenants' applications query their index with an API key (`ingest-pipeline serve`)."""
