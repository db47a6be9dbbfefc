"""The code location: every asset, check, job and resource of the ingest pipeline, assembled once."""

from __future__ import annotations

from dagster import Definitions

from ingest_pipeline.defs.assets import chunk_embeddings, cyborgdb_index, document_chunks, raw_documents
from ingest_pipeline.defs.checks import ciphertexts_decrypt, index_matches_ledger, sample_recall_at_10
from ingest_pipeline.defs.jobs import ingest_job, rebuild_tenant_index_job
from ingest_pipeline.defs.reconciliation import reconcile_job
from ingest_pipeline.defs.reencryption import reencrypt_job
from ingest_pipeline.defs.resources import (
    CyborgDB,
    EmbeddingModel,
    LandingZoneResource,
    PostgresLedger,
    TenantKeyring,
)
from ingest_pipeline.defs.schedules import pending_work_schedule, weekly_reconciliation_schedule
from ingest_pipeline.defs.sensors import upload_sensor


def build_resources() -> dict:
    """The resources. Nothing is read here: each reads its settings from the environment of the process
    that runs the step, when the step first uses it (see defs/resources.py)."""
    ledger = PostgresLedger()
    return {
        "ledger": ledger,
        "cyborgdb": CyborgDB(),
        "keyring": TenantKeyring(ledger=ledger),
        "landing": LandingZoneResource(),
        "embedding_model": EmbeddingModel(),
    }


def build_definitions() -> Definitions:
    return Definitions(
        assets=[raw_documents, document_chunks, chunk_embeddings, cyborgdb_index],
        asset_checks=[index_matches_ledger, ciphertexts_decrypt, sample_recall_at_10],
        jobs=[ingest_job, rebuild_tenant_index_job, reconcile_job, reencrypt_job],
        sensors=[upload_sensor],
        schedules=[pending_work_schedule, weekly_reconciliation_schedule],
        resources=build_resources(),
    )


defs = build_definitions()
