"""The code location: every asset, check, job and resource of the ingest pipeline, assembled once."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar

from ingest_pipeline.defs.assets import chunk_embeddings, cyborgdb_index, document_chunks, raw_documents
from ingest_pipeline.defs.checks import ciphertexts_decrypt, index_matches_ledger, sample_chunks_retrieve_themselves
from ingest_pipeline.defs.jobs import ingest_job, rebuild_tenant_index
from ingest_pipeline.defs.resources import (
    CyborgDB,
    EmbeddingModel,
    LandingZoneResource,
    PostgresLedger,
    TenantKeyring,
)


def build_resources(for_dagster: bool = True) -> dict:
    """The resources, configured from the environment.

    For Dagster, a variable that is set becomes an EnvVar (resolved at run time and never shown in the
    UI); outside Dagster (the CLI's search and status) values are read directly.
    """

    def _env(name: str) -> str | EnvVar:
        if not os.environ.get(name):
            return ""
        return EnvVar(name) if for_dagster else os.environ[name]

    home = _env("INGEST_HOME")
    return {
        "ledger": PostgresLedger(dsn=_env("INGEST_PG_DSN"), home=home),
        "cyborgdb": CyborgDB(url=_env("INGEST_CYBORGDB_URL"), api_key=_env("INGEST_CYBORGDB_API_KEY"), home=home),
        "keyring": TenantKeyring(master_key=_env("INGEST_MASTER_KEY"), home=home),
        "landing": LandingZoneResource(home=home),
        "embedding_model": EmbeddingModel(model_path=_env("INGEST_MODEL_PATH")),
    }


def build_definitions() -> Definitions:
    return Definitions(
        assets=[raw_documents, document_chunks, chunk_embeddings, cyborgdb_index],
        asset_checks=[index_matches_ledger, ciphertexts_decrypt, sample_chunks_retrieve_themselves],
        jobs=[ingest_job, rebuild_tenant_index],
        resources=build_resources(),
    )


defs = build_definitions()
