"""Where each tenant stands: its documents, chunks and quarantined documents in the ledger, and the vectors in the
generation of its index that search reads."""

from __future__ import annotations

from collections.abc import Callable

from ingest_pipeline.stores.key_vault import UnknownTenant
from ingest_pipeline.stores.ledger import Ledger
from ingest_pipeline.stores.tenant_index import LAYOUT_FULL_TEXT, CyborgIndexes
from ingest_pipeline.work.indexing import open_live_index


def tenant_status(
    ledger: Ledger, indexes: CyborgIndexes, tenant_keys: Callable, tenants: list[str]
) -> dict[str, dict]:
    """{tenant: {documents, chunks, indexed, quarantined, index_vectors, index_layout, search}} for each of
    `tenants`; `tenant_keys` opens a tenant's keys (UnknownTenant for a tenant uploaded but never ingested: its
    index has no vectors)."""
    report = {}
    for tenant_id in tenants:
        counts = ledger.tenants.status(tenant_id)
        try:
            index = open_live_index(ledger, indexes, tenant_keys(tenant_id))
        except UnknownTenant:  # uploaded, never ingested
            index = None
        with ledger.connect() as conn:
            layout = ledger.tenants.index_layout(conn, tenant_id)
        report[tenant_id] = {
            "documents": counts.documents, "chunks": counts.chunks, "indexed": counts.indexed,
            "quarantined": counts.quarantined, "index_vectors": index.count() if index else 0,
            "index_layout": layout,
            # What search ranks by: an index of the layout before the full-text field answers by vector only.
            "search": "hybrid" if layout >= LAYOUT_FULL_TEXT else "vector-only",
        }
    return report
