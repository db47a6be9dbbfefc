"""Asset checks that tell the truth about the index: it matches the ledger, decrypts, and retrieves."""


import random
import warnings
from dataclasses import dataclass

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetRecordsFilter,
    PreviewWarning,
    asset_check,
)

from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.defs.assets import cyborgdb_index
from ingest_pipeline.defs.partitions import tenant_month_partitions
from ingest_pipeline.defs.resources import CyborgDB, PostgresLedger, TenantKeyring
from ingest_pipeline.defs.shared import tenant_and_month

# Partitioned asset checks are "preview" in Dagster 1.13; they are what gives each partition its checks.
warnings.filterwarnings("ignore", category=PreviewWarning)

SAMPLE_SIZE = 20  # queries per run
BASELINE_SIZE = 2_000  # indexed vectors read from the cold copy as the exact baseline
TOP_K = 10
MIN_RECALL = 0.95
SELF_MATCH_DISTANCE = 1e-4
# How far an index's reported cosine distance may be from the exact one computed from the cold copy.
DISTANCE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class RunWrites:
    """What this run's `cyborgdb_index` step wrote: its counts and a random sample of the ids (see IndexWriter)."""

    upserted: int
    removed: int
    upserted_ids: list[str]
    removed_ids: list[str]

    @property
    def nothing(self) -> bool:
        return not self.upserted and not self.removed


def this_runs_writes(context: AssetCheckExecutionContext) -> RunWrites | None:
    """The writes of this run's materialization of the checked partition, or None when this run did not
    materialize it (the check was launched on its own)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=cyborgdb_index.key, asset_partitions=[context.partition_key]), limit=1,
    ).records
    if not records or records[0].run_id != context.run.run_id:
        return None
    metadata = records[0].asset_materialization.metadata

    def value(name, default):
        entry = metadata.get(name)
        return entry.value if entry is not None else default

    return RunWrites(int(value("chunks_upserted", 0)), int(value("chunks_removed", 0)),
                     list(value("upserted_ids_sample", [])), list(value("removed_ids_sample", [])))


def _judge_the_runs_writes(context: AssetCheckExecutionContext, measure, ledger: PostgresLedger, cyborgdb: CyborgDB,
                           keyring: TenantKeyring) -> AssetCheckResult:
    """An index check of this run's writes: `measure(store, indexes, keyring, tenant, writes)` gives (passed,
    figures); a run that wrote nothing to the index passes at no cost (the weekly reconciliation reads it all)."""
    tenant, _ = tenant_and_month(context)
    writes = this_runs_writes(context)
    if writes is not None and writes.nothing:
        return AssetCheckResult(passed=True, metadata={
            "note": "this run wrote nothing to the index; the weekly reconciliation compares every id"})
    passed, figures = measure(ledger.ledger, cyborgdb.indexes, keyring, tenant, writes)
    return AssetCheckResult(passed=passed, metadata=figures)


def compare_index_with_ledger(store, indexes, keyring, tenant: str, writes: RunWrites | None) -> tuple[bool, dict]:
    """(passed, figures): the ids a run upserted are in the tenant's live index and indexed in the ledger, the
    ids it removed are in neither, and the index holds as many vectors as the ledger has indexed chunks.

    Under the tenant's lock in shared mode (no writer between the two counts). Its cost is the run's sample of
    ids (at most 2 x 128 looked up by id) and two counts: the index's is one call on either backend, the ledger's
    an index-only count. It never lists the index; the weekly reconciliation compares every id.
    """
    upserted = list(writes.upserted_ids) if writes else []
    removed = list(writes.removed_ids) if writes else []
    with store.tenant_reader(tenant) as conn:
        ledger_indexed = store.chunks.indexed_count(conn, tenant)
        live, _, _ = store.tenants.generations(conn, tenant)
        index = indexes.open(keyring.tenant_keys(tenant), generation=live)
        index_vectors = index.count() if index is not None else 0
        in_index = index.present(upserted + removed) if index is not None else set()
        in_ledger = {row.chunk_id for row in store.chunks.indexed(conn, tenant, upserted + removed)}
    figures = {
        "ledger_indexed": ledger_indexed, "index_vectors": index_vectors,
        "run_upserted_checked": len(upserted),
        "run_upserted_missing_from_index": sum(chunk not in in_index for chunk in upserted),
        "run_upserted_not_indexed_in_ledger": sum(chunk not in in_ledger for chunk in upserted),
        "run_removed_checked": len(removed),
        # (unless a later write indexed the id again: then the ledger says so)
        "run_removed_still_in_index": sum(chunk in in_index and chunk not in in_ledger for chunk in removed),
    }
    passed = ledger_indexed == index_vectors and not any(
        figures[name] for name in ("run_upserted_missing_from_index", "run_upserted_not_indexed_in_ledger",
                                   "run_removed_still_in_index"))
    return passed, figures


@asset_check(asset=cyborgdb_index, partitions_def=tenant_month_partitions, blocking=False)
def index_matches_ledger(
    context: AssetCheckExecutionContext, ledger: PostgresLedger, cyborgdb: CyborgDB, keyring: TenantKeyring
) -> AssetCheckResult:
    """What this run wrote is in the index: the chunk ids it upserted (a random sample of at most 128) are in the
    tenant's CyborgDB index and indexed in the ledger, those it removed are gone from both, and the index holds
    exactly as many vectors as the ledger has indexed chunks. A run that wrote nothing costs nothing here. The
    weekly reconciliation compares every id (`reconcile_job`)."""
    return _judge_the_runs_writes(context, compare_index_with_ledger, ledger, cyborgdb, keyring)


@asset_check(asset=cyborgdb_index, partitions_def=tenant_month_partitions, blocking=False)
def ciphertexts_decrypt(
    context: AssetCheckExecutionContext, ledger: PostgresLedger, keyring: TenantKeyring
) -> AssetCheckResult:
    """Every chunk text, citation and embedding ciphertext of the partition decrypts under the tenant's key."""
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    checked = failed = 0
    with store.connect() as conn:
        rows = store.chunks.in_partition(conn, tenant, month)
        keys = keyring.keyset(tenant, conn) if rows else None
    for row in rows:
        encryptor = keys.encryptor(row.key_version)
        opens = {"text": encryptor.decrypt_text, "citation": encryptor.decrypt_citation,
                 "embedding": encryptor.decrypt_vector}
        for field, sealed in (("text", row.text_ciphertext), ("citation", row.citation_ciphertext),
                              ("embedding", row.embedding_ciphertext)):
            if sealed is None:
                continue
            checked += 1
            try:
                opens[field](row.chunk_id, sealed, row.text_mac, row.seal_format)
            except DecryptionError:
                failed += 1
    return AssetCheckResult(
        passed=failed == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"ciphertexts_checked": checked, "ciphertexts_failed": failed},
    )


def sampled_recall(store, indexes, keyring, tenant: str, writes: RunWrites | None, *, queries: int = SAMPLE_SIZE,
                   baseline: int = BASELINE_SIZE, seed: int | None = None) -> tuple[bool, dict]:
    """(passed, figures) of the recall check, against an exact baseline of bounded size.

    The baseline B: a uniform random sample of at most `baseline` of the tenant's indexed vectors from the cold
    copy (decrypted), plus those of the run's upserted sample. Queries: up to `queries` vectors of B, the run's
    own first. The index answers each query with its top 10 over the whole tenant, so its answers are compared
    with what exact search over B can prove about them:

    - self-recall: the query's own chunk (or an identical one) comes back first;
    - fidelity: every hit is an indexed chunk of this tenant, and the distance the index reports is the exact
      cosine distance between the two vectors of the cold copy (so an index answering garbage fails);
    - sampled recall: every vector of B that exact search puts closer to the query than the index's 10th hit
      must be among the hits. B is a uniform sample, so the share of such vectors that the index missed is an
      unbiased estimate of the share of the true neighbours that it misses (1 - recall@10). Comparing the
      index's top 10 over the tenant with an exact top 10 over B would not be: they rank different sets.

    A tenant of at most `baseline` indexed vectors is read whole, and sampled recall is then exact recall@10. On
    a larger one few vectors of B fall within a query's top 10 (about 10 x |B| / n per query), so self-recall and
    fidelity carry most of the evidence; `benchmarks/bench.py` measures recall at 100,000 vectors exactly. Under
    the tenant's lock in shared mode; the cost depends on `baseline` and `queries`, never on the tenant's size.
    """
    rng = random.Random(seed)
    new_ids = list(writes.upserted_ids) if writes else []
    with store.tenant_reader(tenant) as conn:
        rows = store.chunks.indexed(conn, tenant, new_ids)
        fresh = {row.chunk_id for row in rows}
        sample = store.chunks.sample_indexed(conn, tenant, baseline, rng)
        rows += [row for row in sample if row.chunk_id not in fresh]
        if not rows:
            return True, {"sampled": 0, "note": "no indexed chunks"}
        live, _, _ = store.tenants.generations(conn, tenant)
        index = indexes.open(keyring.tenant_keys(tenant), generation=live)
        if index is None:
            return False, {"sampled": 0, "note": "index does not exist"}
        keys = keyring.keyset(tenant, conn)

        def vectors(batch):
            found = np.stack([keys.encryptor(row.key_version).decrypt_vector(
                row.chunk_id, row.embedding_ciphertext, row.text_mac, row.seal_format) for row in batch])
            return found / np.linalg.norm(found, axis=1, keepdims=True)

        exact = vectors(rows)
        column = {row.chunk_id: i for i, row in enumerate(rows)}
        picked = [i for i, row in enumerate(rows) if row.chunk_id in fresh][:queries]
        chosen = set(picked)
        others = [i for i in range(len(rows)) if i not in chosen]
        picked += rng.sample(others, min(queries - len(picked), len(others)))
        neighbours = index.query(exact[picked], top_k=TOP_K)
        # The hits outside B, read by id so that their distances can be checked too (at most 10 per query).
        outside = sorted({hit["id"] for hits in neighbours for hit in hits} - set(column))
        extra = store.chunks.indexed(conn, tenant, outside)
        trained = index.is_trained()
    hit_vectors = {row.chunk_id: v for row, v in zip(extra, vectors(extra) if extra else [], strict=True)}
    hit_vectors.update({chunk: exact[i] for chunk, i in column.items()})
    found_first = unknown = wrong_distance = within = found = 0
    for query, hits in zip(picked, neighbours, strict=True):
        ids = [hit["id"] for hit in hits]
        # Identical chunks (the same paragraph in two documents) tie: any of them is a right answer.
        nearest = [hit["id"] for hit in hits if hit["distance"] <= hits[0]["distance"] + SELF_MATCH_DISTANCE]
        found_first += rows[query].chunk_id in nearest
        for hit in hits:
            vector = hit_vectors.get(hit["id"])
            if vector is None:
                unknown += 1
            elif abs((1.0 - float(vector @ exact[query])) - float(hit["distance"])) > DISTANCE_TOLERANCE:
                wrong_distance += 1
        distances = 1.0 - exact @ exact[query]
        threshold = hits[-1]["distance"] - SELF_MATCH_DISTANCE if len(hits) >= TOP_K else np.inf
        closer = [i for i in np.flatnonzero(distances < threshold) if i != query]
        within += len(closer)
        found += sum(rows[i].chunk_id in ids for i in closer)
    recall = found / within if within else None
    passed = (found_first == len(picked) and not unknown and not wrong_distance
              and (recall is None or recall >= MIN_RECALL))
    return passed, {
        "queries": len(picked), "retrieved_first": found_first, "baseline_vectors": len(rows),
        "run_vectors_in_baseline": len(fresh), "hits_not_indexed_here": unknown,
        "hits_with_wrong_distance": wrong_distance, "sampled_neighbours": within,
        "sampled_neighbours_found": found, "recall_at_10": round(recall, 4) if recall is not None else "n/a",
        "min_recall": MIN_RECALL, "index_trained": trained,
    }


@asset_check(asset=cyborgdb_index, partitions_def=tenant_month_partitions, blocking=False)
def sample_recall_at_10(
    context: AssetCheckExecutionContext, ledger: PostgresLedger, cyborgdb: CyborgDB, keyring: TenantKeyring
) -> AssetCheckResult:
    """The index still finds what exact search finds, judged against a bounded exact baseline: a random
    sample of at most 2,000 of the tenant's indexed vectors from the cold copy plus what this run upserted.
    Up to 20 of them (this run's first) query the index: each must come back first (self-recall); every hit
    must be an indexed chunk of the tenant at the exact cosine distance the cold copy gives; and every
    baseline vector that exact search puts closer than the index's 10th hit must be among the hits (recall
    over the sampled neighbours at least 0.95; exact recall@10 for a tenant of at most 2,000 vectors). The
    index's top 10 over the whole tenant is never compared with an exact top 10 over the sample: those rank
    different sets. A trained (IVF) index probes only some clusters: this shows it still finds its vectors.
    A run that wrote nothing costs nothing here."""
    return _judge_the_runs_writes(context, sampled_recall, ledger, cyborgdb, keyring)
