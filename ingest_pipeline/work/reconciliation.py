"""Reconciliation: a tenant's ledger against the ids its CyborgDB index returns, and the repair of any drift.

The ledger is the truth; each generation of the tenant's index is compared with it by id:

- a row marked 'indexed' whose id the index lacks is *missing*: upserted again from the encrypted cold copy
  (the sealed embedding is decrypted in memory; nothing is embedded again). An index that does not exist at
  all is created and refilled the same way;
- a vector whose id the ledger does not know is an *orphan*: deleted from the index;
- an 'embedded' row is *unfinished* (a run stopped between its upsert and the commit, or before the upsert):
  upserted, then marked indexed;
- a 'stale' row is deleted from every generation of the index, then from the ledger, as the index stage does;
- a 'chunked' row is *pending* (no embedding yet): the ingest job's work, only counted;
- an indexed chunk whose vector is in the index but whose full-text field is not (read back with its metadata)
  is *missing its text*: upserted again, like a missing vector;
- a live index of the layout before the full-text field (vector-only search) is *on the old layout*: moved to
  the current layout by the rebuild (a new generation filled from the cold copy beside the live one, then
  swapped: no re-embedding, search answers from the live index throughout).

While a rebuild is in progress the tenant is reconciled, not skipped: the live generation is compared with
every 'indexed' row, the generation being rebuilt with the 'indexed' rows the rebuild has passed (ids up to its
cursor; later ones are the rebuild's own work), and unfinished and stale rows are written to both, as the
`IndexWriter` does. So neither a search nor the rebuild's completeness check ever sees the drift again.

Orphans are deleted only while they are at most `max_orphan_share` of a generation's vectors: a ledger that
knows almost nothing of an index (restored from an old backup, or the wrong database) is a reason to look,
not to empty the index. `allow_mass_delete` confirms it.

Id sets are compared in memory (a few hundred bytes an id: fine up to about a million ids); ciphertexts are
read `batch_size` rows at a time, each page locked in its own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import pandas as pd

from ingest_pipeline.stores.ledger import Ledger, TenantSession
from ingest_pipeline.stores.tenant_index import LAYOUT_VECTOR_ONLY, TEXT_FIELD, CyborgIndexes
from ingest_pipeline.work.indexing import IndexWriter

DELETE_PAGE = 500
DEFAULT_MAX_ORPHAN_SHARE = 0.5


@dataclass
class TenantReconciliation:
    """What reconciliation found in one tenant's ledger and index, and what it repaired.

    Found before any repair: `missing` and `orphans` in the live generation, `rebuild_missing` and
    `rebuild_orphans` in the generation being rebuilt, `unfinished_rows`, `stale_rows` and `pending_rows`.
    Repaired (all zero in a dry run): `repaired_missing` vectors upserted and `removed_orphans` vectors deleted,
    over both generations; `finished_rows` upserted and marked indexed; `removed_stale_rows` deleted.
    """

    tenant_id: str
    dry_run: bool = False
    live_generation: int = 1
    rebuilding_generation: int | None = None
    index_existed: bool = False
    index_vectors_before: int = 0
    ledger_indexed: int = 0
    missing: int = 0
    orphans: int = 0
    stale_rows: int = 0
    stale_in_index: int = 0
    unfinished_rows: int = 0
    pending_rows: int = 0
    rebuild_missing: int = 0
    rebuild_orphans: int = 0
    repaired_missing: int = 0
    removed_orphans: int = 0
    orphans_held_back: int = 0
    finished_rows: int = 0
    removed_stale_rows: int = 0
    index_recreated: bool = False
    index_vectors_after: int = 0
    text_missing: int = 0
    repaired_text: int = 0
    old_layout: bool = False
    layout_rebuilt: bool = False
    note: str = ""
    error: str = ""

    @property
    def drift(self) -> int:
        """Everything found out of line. Pending rows are not drift: the ingest job embeds them."""
        return (self.missing + self.orphans + self.unfinished_rows + self.stale_rows + self.rebuild_missing
                + self.rebuild_orphans + self.text_missing)

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    def as_dict(self) -> dict:
        return {**asdict(self), "drift": self.drift}


# The report's columns, in order, with what each means (the Dagster table's schema and the CSV's header).
REPORT_COLUMNS: dict[str, str] = {
    "tenant_id": "The tenant.",
    "dry_run": "True when drift was only reported, not repaired.",
    "live_generation": "The index generation search reads.",
    "rebuilding_generation": "The generation a rebuild in progress is filling (empty without one).",
    "index_existed": "Whether the live index existed before reconciliation.",
    "index_vectors_before": "Vectors in the live index before reconciliation.",
    "ledger_indexed": "Chunks the ledger marked indexed before reconciliation.",
    "missing": "Indexed chunks absent from the live index.",
    "orphans": "Vectors of the live index whose id the ledger does not know.",
    "stale_rows": "Chunks marked stale (to leave the index, then the ledger).",
    "stale_in_index": "Stale chunks still in the live index.",
    "unfinished_rows": "Chunks embedded but not marked indexed (a run stopped half-way).",
    "pending_rows": "Chunks not embedded yet: left to the ingest job.",
    "rebuild_missing": "Indexed chunks the rebuild has passed that its generation lacks.",
    "rebuild_orphans": "Vectors of the generation being rebuilt whose id the ledger does not know.",
    "repaired_missing": "Missing vectors upserted again from the cold copy (both generations).",
    "removed_orphans": "Orphan vectors deleted (both generations).",
    "orphans_held_back": "Orphans not deleted: too large a share of the index without allow_mass_delete.",
    "finished_rows": "Unfinished chunks upserted and marked indexed.",
    "removed_stale_rows": "Stale chunks deleted from the index and the ledger.",
    "index_recreated": "Whether reconciliation created the live index (after its storage was lost).",
    "index_vectors_after": "Vectors in the live index after reconciliation.",
    "text_missing": "Indexed chunks whose vector is in the live index but whose full-text field is not.",
    "repaired_text": "Chunks upserted again to restore their full-text field.",
    "old_layout": "Whether the live index had the layout before the full-text field (vector-only search).",
    "layout_rebuilt": "Whether reconciliation rebuilt the index in the current layout (from the cold copy).",
    "note": "What else to know.",
    "error": "Why the tenant could not be reconciled.",
    "drift": "Everything found out of line: missing vectors and text, orphans, unfinished and stale rows.",
}
TOTAL_COLUMNS = ["missing", "orphans", "stale_rows", "unfinished_rows", "pending_rows", "rebuild_missing",
                 "rebuild_orphans", "repaired_missing", "removed_orphans", "orphans_held_back", "finished_rows",
                 "removed_stale_rows", "text_missing", "repaired_text", "drift"]


@dataclass
class _GenerationDrift:
    generation: int
    vectors: int
    missing: set[str]
    orphans: set[str]


def _pages(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def _index_ids(writer: IndexWriter, generation: int) -> set[str] | None:
    index = writer.index(generation)
    return index.list_ids() if index is not None else None


def _without_text(index, ids: set[str]) -> set[str]:
    """Which of these ids the index holds without their full-text field (metadata read back, 500 per call)."""
    lacking: set[str] = set()
    for page in _pages(ids, DELETE_PAGE):
        held = index.metadata(page)
        lacking.update(chunk for chunk in page if chunk in held and not held[chunk].get(TEXT_FIELD))
    return lacking


def reconcile_tenant(
    ledger: Ledger, indexes: CyborgIndexes, keyring, session: TenantSession, repair: bool, batch_size: int = 32,
    *, max_orphan_share: float = DEFAULT_MAX_ORPHAN_SHARE, allow_mass_delete: bool = False,
) -> TenantReconciliation:
    """Compare the tenant's ledger with its index and, when `repair`, bring the index back in line.

    `session` is the tenant's writer (`Ledger.tenant_writer`): nothing else writes the tenant while the id
    sets are compared, and every CyborgDB write is fenced by the lock.
    """
    tenant, conn = session.tenant_id, session.conn
    writer = IndexWriter(ledger, indexes, keyring, session, batch_size)
    live, rebuilding, cursor = ledger.tenants.generations(conn, tenant)
    chunks = ledger.chunks.ids_by_state(conn, tenant)
    indexed, unfinished, stale = chunks["indexed"], chunks["embedded"], chunks["stale"]
    known = set().union(*chunks.values())
    report = TenantReconciliation(
        tenant, dry_run=not repair, live_generation=live, rebuilding_generation=rebuilding,
        ledger_indexed=len(indexed), stale_rows=len(stale), unfinished_rows=len(unfinished),
        pending_rows=len(chunks["chunked"]),
    )

    live_ids = _index_ids(writer, live)
    report.index_existed = live_ids is not None
    live_ids = live_ids or set()
    drifts = [_GenerationDrift(live, len(live_ids), indexed - live_ids, live_ids - known)]
    report.index_vectors_before = len(live_ids)
    report.missing, report.orphans = len(drifts[0].missing), len(drifts[0].orphans)
    report.stale_in_index = len(stale & live_ids)
    if not report.index_existed and (indexed or unfinished):
        report.add_note(f"index generation {live} does not exist")
    if rebuilding is not None:
        rebuild_ids = _index_ids(writer, rebuilding) or set()
        passed = {chunk for chunk in indexed if chunk <= cursor} if cursor else set()
        drifts.append(_GenerationDrift(rebuilding, len(rebuild_ids), passed - rebuild_ids, rebuild_ids - known))
        report.rebuild_missing, report.rebuild_orphans = len(drifts[1].missing), len(drifts[1].orphans)
        report.add_note(f"rebuild to generation {rebuilding} in progress: compared up to its cursor, "
                        "repairs written to both generations")
    live_index = writer.index(live)
    text_missing: set[str] = set()
    if live_index is not None:
        report.old_layout = live_index.layout == LAYOUT_VECTOR_ONLY
        if report.old_layout:
            report.add_note(f"index generation {live} has no full-text field (vector-only search)")
        else:
            text_missing = _without_text(live_index, indexed & live_ids)
            report.text_missing = len(text_missing)
    if not repair:
        report.index_vectors_after = report.index_vectors_before
        return report

    for page in _pages(stale, DELETE_PAGE):
        writer.delete_ids(page)  # from every generation first: a row deleted first would leave its vector behind
        with conn.transaction():
            ledger.chunks.remove(conn, page)
        report.removed_stale_rows += len(page)
    for drift in drifts:
        if drift.orphans and len(drift.orphans) > max_orphan_share * drift.vectors and not allow_mass_delete:
            report.orphans_held_back += len(drift.orphans)
            report.add_note(
                f"{len(drift.orphans)} of the {drift.vectors} vectors of generation {drift.generation} are unknown "
                f"to the ledger, more than max_orphan_share={max_orphan_share:.0%}: none deleted; if the ledger is "
                "right, confirm with allow_mass_delete"
            )
        else:
            for page in _pages(drift.orphans, DELETE_PAGE):
                writer.delete_ids(page, [drift.generation])
                report.removed_orphans += len(page)
        for page in _pages(drift.missing, batch_size):
            with conn.transaction():
                rows = ledger.chunks.by_id(conn, tenant, page, "indexed")
                writer.upsert_rows(rows, [drift.generation])
            report.repaired_missing += len(rows)
    for page in _pages(text_missing, batch_size):
        with conn.transaction():
            rows = ledger.chunks.by_id(conn, tenant, page, "indexed")
            writer.upsert_rows(rows)
        report.repaired_text += len(rows)
    for page in _pages(unfinished, batch_size):
        with conn.transaction():
            rows = ledger.chunks.by_id(conn, tenant, page, "embedded")
            # Upserted even when the id is in the index: its vector may be of the chunk's previous text.
            writer.upsert_rows(rows)
            ledger.chunks.mark_indexed(conn, [row.chunk_id for row in rows])
        report.finished_rows += len(rows)

    if report.old_layout:
        _, generation = writer.rebuild()
        live = generation
        report.layout_rebuilt = True
        report.add_note(f"rebuilt in the current layout as generation {generation}")
    index = writer.index(live)
    report.index_vectors_after = index.count() if index is not None else 0
    report.index_recreated = not report.index_existed and index is not None
    if report.index_recreated:
        report.add_note(f"index generation {live} " + ("recreated from the cold copy" if indexed else "created"))
    return report


# ---- the report ---------------------------------------------------------------------------------


def report_frame(results: Iterable[TenantReconciliation]) -> pd.DataFrame:
    """One row per tenant, in REPORT_COLUMNS order; a tenant without a rebuild has no rebuilding generation."""
    frame = pd.DataFrame([result.as_dict() for result in results], columns=list(REPORT_COLUMNS))
    return frame.astype({"rebuilding_generation": "Int64"})


def report_records(frame: pd.DataFrame) -> list[dict]:
    """The report's rows as plain JSON values (an absent generation becomes null, numbers stay integers)."""
    return json.loads(frame.to_json(orient="records"))


def report_totals(frame: pd.DataFrame) -> dict[str, int]:
    """Sums over all tenants, with how many were reconciled, had drift, and could not be reconciled."""
    totals = {"tenants_reconciled": len(frame), "tenants_with_drift": int((frame["drift"] > 0).sum()),
              "tenants_failed": int((frame["error"] != "").sum())}
    return totals | {column: int(frame[column].sum()) for column in TOTAL_COLUMNS}
