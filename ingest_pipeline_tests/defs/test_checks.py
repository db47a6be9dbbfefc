"""The asset checks on `cyborgdb_index` check what the run wrote, against bounded samples, and fail on a
corrupted index: a vector deleted or left behind the ledger's back, an index that answers garbage."""

import numpy as np

from ingest_pipeline.definitions import build_resources
from ingest_pipeline.defs.checks import RunWrites, compare_index_with_ledger, sampled_recall
from ingest_pipeline_tests.helpers import materialization_metadata, materialize_partition

PARAGRAPHS = [
    "Invoices are due thirty days after delivery; late payment accrues interest at two percent a month.",
    "The notice period for terminating this agreement is ninety days, given in writing to the other party.",
    "Backups are taken nightly at 02:00 UTC and kept for thirty-five days in a second region.",
    "Support tickets of severity one are answered within one hour, around the clock, every day of the year.",
    "Passwords must be at least sixteen characters long and are rotated only after a suspected compromise.",
    "The warehouse in Rotterdam ships orders placed before noon on the same working day.",
]


UNIT = np.ones(384, dtype=np.float32) / np.sqrt(384)


def _tiny_docs(folder, count=3):
    """`count` small documents of a few chunks each, no two paragraphs alike."""
    folder.mkdir(exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"policy-{n}.md"
        path.write_text("\n\n".join(f"# Section {n}.{i}\n\n{p} (Clause {n}.{i}, revision {7 * i + n}.)"
                                      for i, p in enumerate((PARAGRAPHS[n:] + PARAGRAPHS[:n]) * 3)))
        paths.append(path)
    return paths


def _check_metadata(result) -> dict[str, tuple[bool, dict]]:
    return {c.check_name: (c.passed, {k: v.value for k, v in c.metadata.items()})
            for c in result.get_asset_check_evaluations()}


def _writes(result) -> RunWrites:
    meta = materialization_metadata(result, "cyborgdb_index")
    return RunWrites(meta["chunks_upserted"], meta["chunks_removed"], meta["upserted_ids_sample"],
                     meta["removed_ids_sample"])


def _engines(tenant):
    resources = build_resources()
    store, indexes, keyring = resources["ledger"].ledger, resources["cyborgdb"].indexes, resources["keyring"]
    with store.connect() as conn:
        live, _, _ = store.tenants.generations(conn, tenant)
    return store, indexes, keyring, indexes.open(keyring.tenant_keys(tenant), generation=live)


def test_index_matches_ledger_checks_the_runs_writes_and_fails_on_drift_behind_the_ledgers_back(pipeline, tmp_path):
    acme = pipeline.tenant("acme")
    paths = _tiny_docs(tmp_path / "docs")
    pipeline.upload(acme, *paths)
    first = materialize_partition(acme)
    checks = _check_metadata(first)
    writes = _writes(first)
    assert writes.upserted > 0 and len(writes.upserted_ids) == writes.upserted
    passed, figures = checks["index_matches_ledger"]
    assert passed and figures["run_upserted_checked"] == writes.upserted, figures
    assert figures["ledger_indexed"] == figures["index_vectors"] == writes.upserted, figures

    # A run with nothing to do: both checks return at once, reading neither the index nor the cold copy.
    again = _check_metadata(materialize_partition(acme))
    for name in ("index_matches_ledger", "sample_recall_at_10"):
        passed, figures = again[name]
        assert passed and set(figures) == {"note"} and "wrote nothing" in figures["note"], (name, figures)

    store, indexes, keyring, index = _engines(acme)
    # A vector this run wrote vanishes from the index behind the ledger's back.
    lost = writes.upserted_ids[0]
    index.delete([lost])
    passed, figures = compare_index_with_ledger(store, indexes, keyring, acme, writes)
    assert not passed
    assert figures["run_upserted_missing_from_index"] == 1, figures
    assert figures["index_vectors"] == figures["ledger_indexed"] - 1, figures
    # Launched on its own (no run writes to look at), the counts still differ.
    passed, figures = compare_index_with_ledger(store, indexes, keyring, acme, None)
    assert not passed and figures["run_upserted_checked"] == 0, figures

    index.upsert([{"id": lost, "vector": UNIT}])  # back (any vector): the counts agree again
    assert compare_index_with_ledger(store, indexes, keyring, acme, writes)[0]

    # A document removed: the ids the run removed are gone; one put back behind the ledger's back fails.
    pipeline.upload(acme, paths[0].name, delete=True)
    removal = materialize_partition(acme)
    removed = _writes(removal)
    passed, figures = _check_metadata(removal)["index_matches_ledger"]
    assert removed.removed > 0 and passed, figures
    assert figures["run_removed_checked"] == removed.removed and figures["run_removed_still_in_index"] == 0, figures
    index.upsert([{"id": removed.removed_ids[0], "vector": UNIT}])
    passed, figures = compare_index_with_ledger(store, indexes, keyring, acme, removed)
    assert not passed and figures["run_removed_still_in_index"] == 1, figures
    assert figures["index_vectors"] == figures["ledger_indexed"] + 1, figures


def test_sample_recall_uses_a_bounded_baseline_and_fails_when_the_index_answers_garbage(pipeline, tmp_path):
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, *_tiny_docs(tmp_path / "docs", count=4))
    result = materialize_partition(acme)
    passed, figures = _check_metadata(result)["sample_recall_at_10"]
    writes = _writes(result)
    # A tenant smaller than the baseline is read whole: exact recall@10, every chunk of the run queried first.
    assert passed and figures["baseline_vectors"] == writes.upserted, figures
    assert figures["queries"] == figures["retrieved_first"] == min(20, writes.upserted), figures
    assert figures["recall_at_10"] == 1.0 and figures["hits_not_indexed_here"] == 0, figures

    store, indexes, keyring, index = _engines(acme)
    # A baseline smaller than the tenant: the bound holds, the run's vectors are in it, it still passes.
    passed, figures = sampled_recall(store, indexes, keyring, acme, RunWrites(3, 0, writes.upserted_ids[:3], []),
                                     baseline=5, queries=4, seed=1)
    assert passed and figures["baseline_vectors"] <= 5 + 3 and figures["run_vectors_in_baseline"] == 3, figures
    assert figures["queries"] == figures["retrieved_first"] == 4, figures

    # The index now answers garbage: every vector replaced behind the ledger's back by a random one.
    rng = np.random.default_rng(0)
    garbage = rng.standard_normal((len(writes.upserted_ids), 384)).astype(np.float32)
    garbage /= np.linalg.norm(garbage, axis=1, keepdims=True)
    index.upsert([{"id": chunk, "vector": vector} for chunk, vector in zip(writes.upserted_ids, garbage,
                                                                            strict=True)])
    passed, figures = sampled_recall(store, indexes, keyring, acme, writes, seed=2)
    assert not passed
    assert figures["retrieved_first"] < figures["queries"], figures
    assert figures["hits_with_wrong_distance"] > 0, figures
