"""The `ingest-pipeline` command: one module per verb family, over the work layer and the Definitions."""

from ingest_pipeline.cli.main import ingest, main, rebuild, search, status, upload

__all__ = ["ingest", "main", "rebuild", "search", "status", "upload"]
