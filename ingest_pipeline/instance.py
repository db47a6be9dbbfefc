"""Kept for deployments whose dagster.yaml names `ingest_pipeline.instance`; the launcher lives in runtime/."""

from ingest_pipeline.runtime.instance import LocalRunLauncher  # noqa: F401
