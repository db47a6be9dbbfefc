"""`ingest-pipeline search`: hybrid (keyword + vector), vector or keyword search in a tenant's encrypted index."""

from __future__ import annotations

import gc
import warnings
from contextlib import nullcontext
from pathlib import Path

from ingest_pipeline.cli import runs
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import prepare_environment
from ingest_pipeline.stores.key_vault import UnknownTenant


class SearchFellBack(UserWarning):
    """A search ranked otherwise than asked (an index without the full-text field answers by vector only)."""


def search_answers(tenant: str, queries: list[str], top_k: int = 5, *, mode: str | None = None,
                   alpha: float | None = None, filters=None) -> dict:
    """{"answers": [[hit, ...] per query], "mode": the mode that ranked, "requested_mode", "alpha",
    "score_kind", "warning": why it ranked otherwise than asked, or None}. Each hit is a dict with its
    `score_kind` and the `warning`. `filters` is a `SearchFilters` (or a dict of its fields). An unknown tenant
    has no hits, an erased one raises TenantErased (an error, not an empty answer)."""
    from ingest_pipeline.work.indexing import open_live_index
    from ingest_pipeline.work.search import DEFAULT_MODE, SearchFilters, check_search_options, search_tenant

    mode = mode or DEFAULT_MODE
    check_search_options(mode, alpha, top_k)
    if isinstance(filters, dict):
        unknown = set(filters) - set(SearchFilters.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown search filter(s): {', '.join(sorted(unknown))}")
        filters = SearchFilters(**filters)
    if filters:
        filters.to_cyborgdb()  # a bad filter is refused before anything is opened
    tenant = validate_tenant(tenant)
    prepare_environment()
    _, resources = runs.definitions()
    keyring, model, ledger = resources["keyring"], resources["embedding_model"], resources["ledger"].ledger
    try:
        keys = keyring.keyset(tenant)  # TenantErased for an erased tenant: an error, not an empty answer
    except UnknownTenant:
        keys = None
    indexes = resources["cyborgdb"].indexes
    # An embedded index opens in one process at a time: this says so to a search service that keeps it open.
    with ledger.index_wanted(tenant) if indexes.embedded and keys is not None else nullcontext():
        index = open_live_index(ledger, indexes, keys.keys()) if keys is not None else None
        try:
            answers = search_tenant(
                tenant_id=tenant, queries=queries, top_k=top_k, embedder=model.embedder, index=index, ledger=ledger,
                # A row moved to a newer key version since the keys were read (a rotation) reads them again.
                encryptor_for=lambda v: (keys if v in keys.data_keys else keyring.keyset(tenant)).encryptor(v),
                model_ids=(model.model_id, model.legacy_model_id), mode=mode, alpha=alpha, filters=filters,
            )
        finally:
            # An embedded index stays locked to this process while any reference to it lives, and the retry
            # machinery's reference cycles keep one until the collector runs: let go of it now, so that a writer
            # or the search service in another process can open it (a long-lived caller would hold it).
            del index
            gc.collect()
    # Each hit carries the warning too, so that a JSON consumer of the hits alone sees a fallback.
    return {"answers": [[hit.as_dict() | {"warning": answers.warning} for hit in hits] for hits in answers.hits],
            "mode": answers.mode,
            "requested_mode": answers.requested_mode, "alpha": answers.alpha, "score_kind": answers.score_kind,
            "warning": answers.warning}


def search(tenant: str, queries: list[str], top_k: int = 5, *, mode: str | None = None, alpha: float | None = None,
           filters=None) -> list[list[dict]]:
    """The `top_k` hits for each query in the tenant's index, in order, ranked by `mode` ("hybrid" by default,
    "vector" or "keyword"; `alpha` weights hybrid's vector leg against its keyword leg); see `search_answers`.
    A search that had to rank otherwise (an old-layout index: vector only) issues a SearchFellBack warning."""
    result = search_answers(tenant, queries, top_k, mode=mode, alpha=alpha, filters=filters)
    if result["warning"]:
        warnings.warn(result["warning"], SearchFellBack, stacklevel=2)
    return result["answers"]


def search_lines(tenant: str, queries_file: str | Path, top_k: int = 5, **options) -> list[list[dict]]:
    """The answers to a file of one query per line, in its order; a blank line gets an empty list so that the
    answers stay aligned with the lines. `options` are `search`'s."""
    lines = [line.strip() for line in Path(queries_file).read_text().splitlines()]
    answers = iter(search(tenant, [q for q in lines if q], top_k, **options))
    return [next(answers) if q else [] for q in lines]
