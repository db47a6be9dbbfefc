"""`ingest-pipeline search`: semantic search in a tenant's encrypted index."""

from __future__ import annotations

from pathlib import Path

from ingest_pipeline.cli import runs
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import prepare_environment
from ingest_pipeline.stores.key_vault import UnknownTenant


def search(tenant: str, queries: list[str], top_k: int = 5) -> list[list[dict]]:
    """The `top_k` hits for each query in the tenant's index, in order; an unknown tenant has none, an erased
    one raises TenantErased (an error, not an empty answer)."""
    from ingest_pipeline.work.indexing import open_live_index
    from ingest_pipeline.work.search import search_tenant

    tenant = validate_tenant(tenant)
    prepare_environment()
    _, resources = runs.definitions()
    keyring, model, ledger = resources["keyring"], resources["embedding_model"], resources["ledger"].ledger
    try:
        keys = keyring.keyset(tenant)  # TenantErased for an erased tenant: an error, not an empty answer
    except UnknownTenant:
        return [[] for _ in queries]
    index = open_live_index(ledger, resources["cyborgdb"].indexes, keys.keys())
    answers = search_tenant(
        tenant_id=tenant, queries=queries, top_k=top_k, embedder=model.embedder, index=index, ledger=ledger,
        # A row moved to a newer key version since the keys were read (a rotation) reads them again.
        encryptor_for=lambda v: (keys if v in keys.data_keys else keyring.keyset(tenant)).encryptor(v),
        model_ids=(model.model_id, model.legacy_model_id),
    )
    return [[hit.as_dict() for hit in hits] for hits in answers]


def search_lines(tenant: str, queries_file: str | Path, top_k: int = 5) -> list[list[dict]]:
    """The answers to a file of one query per line, in its order; a blank line gets an empty list so that the
    answers stay aligned with the lines."""
    lines = [line.strip() for line in Path(queries_file).read_text().splitlines()]
    answers = iter(search(tenant, [q for q in lines if q], top_k))
    return [next(answers) if q else [] for q in lines]
