"""The pure core: identifiers, crypto, extraction, chunking and embedding. Knows nothing of Dagster."""
