"""Asset checks that tell the truth about the index: it matches the ledger, decrypts, and retrieves."""


import random
import warnings

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    PreviewWarning,
    asset_check,
)

from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.defs.assets import cyborgdb_index, tenant_and_month
from ingest_pipeline.defs.partitions import tenant_month_partitions
from ingest_pipeline.defs.resources import CyborgDB, PostgresLedger, TenantKeyring

# Partitioned asset checks are "preview" in Dagster 1.13; they are what gives each partition its checks.
warnings.filterwarnings("ignore", category=PreviewWarning)

SAMPLE_SIZE = 20
TOP_K = 10
MIN_RECALL = 0.95
SELF_MATCH_DISTANCE = 1e-4


@asset_check(asset=cyborgdb_index, partitions_def=tenant_month_partitions, blocking=False)
def index_matches_ledger(
    context: AssetCheckExecutionContext, ledger: PostgresLedger, cyborgdb: CyborgDB, keyring: TenantKeyring
) -> AssetCheckResult:
    """The tenant's CyborgDB index holds exactly the chunk ids the ledger marks indexed."""
    tenant, _ = tenant_and_month(context)
    store = ledger.ledger
    # As the tenant's writer, so no run changes the index between the two listings.
    with store.tenant_writer(tenant) as session:
        expected = store.indexed_chunk_ids(session.conn, tenant)
        live, _, _ = store.index_generations(session.conn, tenant)
        index = cyborgdb.indexes.open(keyring.tenant_keys(tenant), generation=live)
        actual = index.list_ids() if index is not None else set()
    missing, unexpected = expected - actual, actual - expected
    return AssetCheckResult(
        passed=not missing and not unexpected,
        metadata={"ledger_indexed": len(expected), "index_vectors": len(actual),
                  "missing_from_index": len(missing), "not_in_ledger": len(unexpected)},
    )


@asset_check(asset=cyborgdb_index, partitions_def=tenant_month_partitions, blocking=False)
def ciphertexts_decrypt(
    context: AssetCheckExecutionContext, ledger: PostgresLedger, keyring: TenantKeyring
) -> AssetCheckResult:
    """Every chunk text and embedding ciphertext of the partition decrypts under the tenant's key."""
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    checked = failed = 0
    with store.connect() as conn:
        rows = store.partition_chunks(conn, tenant, month)
        keys = keyring.keyset(tenant, conn) if rows else None
    for row in rows:
        encryptor = keys.encryptor(row["key_version"])
        for field, sealed in (("text", row["text_ciphertext"]), ("embedding", row["embedding_ciphertext"])):
            if sealed is None:
                continue
            checked += 1
            try:
                if field == "text":
                    encryptor.decrypt_text(row["chunk_id"], sealed, row["text_mac"], row["seal_format"])
                else:
                    encryptor.decrypt_vector(row["chunk_id"], sealed, row["text_mac"], row["seal_format"])
            except DecryptionError:
                failed += 1
    return AssetCheckResult(
        passed=failed == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"ciphertexts_checked": checked, "ciphertexts_failed": failed},
    )


@asset_check(asset=cyborgdb_index, partitions_def=tenant_month_partitions, blocking=False)
def sample_recall_at_10(
    context: AssetCheckExecutionContext, ledger: PostgresLedger, cyborgdb: CyborgDB, keyring: TenantKeyring
) -> AssetCheckResult:
    """Recall@10 of the encrypted index against exact cosine search over all the tenant's indexed vectors,
    for a random sample of the partition's chunks queried by their own embedding (at least 0.95), and each
    sampled chunk comes back first. A trained (IVF) index probes only some clusters: this is what shows it
    still finds what exact search finds."""
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    # As the tenant's writer: an embedded index must not be read while another process writes it.
    with store.tenant_writer(tenant) as session:
        rows = [row for row in store.partition_chunks(session.conn, tenant, month) if row["state"] == "indexed"]
        sample = random.Random(0).sample(rows, min(SAMPLE_SIZE, len(rows)))
        if not sample:
            return AssetCheckResult(passed=True, metadata={"sampled": 0, "note": "no indexed chunks in partition"})
        live, _, _ = store.index_generations(session.conn, tenant)
        index = cyborgdb.indexes.open(keyring.tenant_keys(tenant), generation=live)
        if index is None:
            return AssetCheckResult(passed=False, metadata={"sampled": len(sample), "note": "index does not exist"})
        keys = keyring.keyset(tenant, session.conn)

        def vector(row):
            return keys.encryptor(row["key_version"]).decrypt_vector(
                row["chunk_id"], row["embedding_ciphertext"], row["text_mac"], row["seal_format"])

        everything = [row for row in store.tenant_chunks_with_embeddings(session.conn, tenant)
                      if row["state"] == "indexed"]
        column = {row["chunk_id"]: i for i, row in enumerate(everything)}
        exact = np.stack([vector(row) for row in everything])
        queries = exact[[column[row["chunk_id"]] for row in sample]]
        neighbours = index.query(queries, top_k=TOP_K)
        trained = index.is_trained()
    similarity = queries @ exact.T
    k = min(TOP_K, len(everything))
    found_first, recalls = 0, []
    for row, hits, scores in zip(sample, neighbours, similarity, strict=True):
        # Identical chunks (the same paragraph in two documents) tie: any of them is a right answer.
        nearest = [hit["id"] for hit in hits if hit["distance"] <= hits[0]["distance"] + SELF_MATCH_DISTANCE]
        found_first += row["chunk_id"] in nearest
        kth_best = np.sort(scores)[-k]
        right = sum(1 for hit in hits if hit["id"] in column and scores[column[hit["id"]]] >= kth_best - 1e-5)
        recalls.append(min(right, k) / k)
    recall = float(np.mean(recalls))
    return AssetCheckResult(
        passed=recall >= MIN_RECALL and found_first == len(sample),
        metadata={"recall_at_10": round(recall, 4), "min_recall": MIN_RECALL, "sampled": len(sample),
                  "retrieved_first": found_first, "exact_search_over_vectors": len(everything),
                  "index_trained": trained},
    )
