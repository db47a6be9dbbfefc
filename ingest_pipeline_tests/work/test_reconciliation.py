"""Reconciliation: drift planted behind the ledger's back (in CyborgDB directly, or in the ledger's rows) is
found, reported exactly, and repaired from the cold copy without re-embedding; the asset checks pass again."""

import csv
import gc
import json
import uuid
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import pytest
from dagster import AssetKey, Failure, MultiPartitionKey

from ingest_pipeline import cli
from ingest_pipeline.cli import reconcile as cli_reconcile
from ingest_pipeline.cli.search import SearchFellBack, search_answers
from ingest_pipeline.core.crypto import LEGACY_SEAL_FORMAT, VectorEncryptor, derive_tenant_keys
from ingest_pipeline.definitions import build_definitions, build_resources
from ingest_pipeline.defs.checks import compare_index_with_ledger, sampled_recall
from ingest_pipeline.runtime.instance import dagster_instance
from ingest_pipeline.stores.key_vault import TenantKeySet
from ingest_pipeline.stores.ledger import Chunk
from ingest_pipeline.stores.tenant_index import LAYOUT_VECTOR_ONLY, TEXT_FIELD, TenantIndex
from ingest_pipeline.work.indexing import IndexWriter
from ingest_pipeline.work.reconciliation import REPORT_COLUMNS, TenantReconciliation
from ingest_pipeline.work.uploads import current_month
from ingest_pipeline_tests.helpers import ledger_chunks, materialization_metadata, materialize_partition

PATENT_QUERY = "What does the Apache License say about patents?"


def open_index(tenant: str, generation: int = 1) -> TenantIndex:
    """The tenant's index opened directly, as an operator with the keys could: behind the ledger's back.

    Use it in one statement: embedded cyborgdb-core locks an index's files for as long as a process holds it
    open, and the CLI runs in a process of its own.
    """
    resources = build_resources()
    return resources["cyborgdb"].indexes.open(resources["keyring"].tenant_keys(tenant), generation=generation)


def orphan_items(count: int) -> list[dict]:
    vectors = np.random.default_rng(7).standard_normal((count, 384)).astype(np.float32)
    return [{"id": str(uuid.uuid4()), "vector": vector} for vector in vectors]


def set_state(ledger, chunk_ids: list[str], state: str) -> None:
    with ledger.connect() as conn:
        conn.execute("UPDATE ingest.chunks SET state = %s WHERE chunk_id = ANY(%s::uuid[])", (state, chunk_ids))


def ids_in_state(ledger, tenant: str, *states: str) -> set[str]:
    return {cid for cid, row in ledger_chunks(ledger, tenant).items() if row["state"] in states}


def figures(report: dict, expected: dict) -> dict:
    return {name: report[name] for name in expected}


def ingested_acme(pipeline, docs):
    """Tenant acme with two documents ingested: its name, the ledger, and how many embeddings were computed."""
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "debian-users-and-groups.html")
    pipeline.ingest()
    ledger = pipeline.ledger()
    return acme, ledger, ledger.tenants.status(acme).embeddings_computed


def assert_checks_pass_with_nothing_left_to_index(tenant: str) -> None:
    result = materialize_partition(tenant)
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 and all(check.passed for check in checks), [(c.check_name, c.metadata) for c in checks]
    index_stage = materialization_metadata(result, "cyborgdb_index")
    assert (index_stage["chunks_upserted"], index_stage["chunks_removed"]) == (0, 0)
    # That run wrote nothing, so its index checks returned at once; launched on their own, they compare.
    resources = build_resources()
    engines = (resources["ledger"].ledger, resources["cyborgdb"].indexes, resources["keyring"], tenant, None)
    for check in (compare_index_with_ledger, sampled_recall):
        passed, found = check(*engines)
        assert passed, (check.__name__, found)


def test_the_report_has_a_described_column_for_every_figure():
    assert [field.name for field in fields(TenantReconciliation)] + ["drift"] == list(REPORT_COLUMNS)


def test_rows_sealed_in_the_legacy_format_are_upserted_from_the_cold_copy_too():
    keys = derive_tenant_keys(bytes(range(1, 33)), "acme")
    keyset = TenantKeySet("acme", keys.key_version, keys.mac_key + keys.index_key, {keys.key_version: keys.data_key})
    writer = IndexWriter(None, None, None, SimpleNamespace(tenant_id="acme", conn=None, keys=keyset))
    encryptor, vector = VectorEncryptor(keys), np.arange(4, dtype=np.float32)
    mac = encryptor.text_mac("the text")
    row = Chunk(chunk_id="c1", doc_id="d1", sequence=0, key_version=keys.key_version, text_mac=mac,
                text_ciphertext=encryptor.encrypt_text("c1", "the text", LEGACY_SEAL_FORMAT),
                seal_format=LEGACY_SEAL_FORMAT, state="embedded", doc_name="a/b/c.txt", partition_month="2026-11-01",
                format="text", embedding_ciphertext=encryptor.encrypt_vector("c1", vector, mac, LEGACY_SEAL_FORMAT))
    item = writer.items([row])[0]
    assert item["vector"].tolist() == vector.tolist()
    # The text as the full-text field, and the fields search filters on inside the index.
    assert item["metadata"] | {"doc_id": None} == {
        "doc_id": None, "tenant_id": "acme", "chunk_sequence": 0, "text": "the text", "doc_name": "a/b/c.txt",
        "name_prefixes": ["a/", "a/b/"], "month": "2026-11", "month_key": 202611, "format": "text"}
    assert "format" not in writer.items([replace(row, format=None)])[0]["metadata"]  # not known: no field


def test_drift_planted_behind_the_ledgers_back_is_reported_then_repaired(pipeline, docs):
    acme, ledger, embeddings_computed = ingested_acme(pipeline, docs)

    # A deletion whose run stopped after raw_documents: its chunks are stale and still in the index.
    pipeline.upload(acme, "debian-users-and-groups.html", delete=True)
    partition = MultiPartitionKey({"tenant": acme, "month": current_month()})
    build_definitions().resolve_job_def("ingest_job").execute_in_process(
        partition_key=partition, instance=dagster_instance(), asset_selection=[AssetKey("raw_documents")])
    stale = ids_in_state(ledger, acme, "stale")
    live = sorted(ids_in_state(ledger, acme, "indexed"))
    assert stale and len(live) > 3

    vanished, half_done, half_done_and_vanished = live[0], live[1], live[2]
    open_index(acme).delete([vanished, half_done_and_vanished])  # vectors lost behind the ledger's back
    open_index(acme).upsert(orphan_items(1))  # a vector the ledger never heard of
    set_state(ledger, [half_done, half_done_and_vanished], "embedded")  # rows left half-done
    planted_index = open_index(acme).list_ids()
    planted_rows = ledger_chunks(ledger, acme)

    found = {"index_existed": True, "ledger_indexed": len(live) - 2, "missing": 1, "orphans": 1,
             "stale_rows": len(stale), "stale_in_index": len(stale), "unfinished_rows": 2, "pending_rows": 0,
             "index_vectors_before": len(live) - 2 + 1 + len(stale), "drift": 1 + 1 + 2 + len(stale)}
    dry_run = cli_reconcile.reconcile(acme, repair=False)
    assert dry_run["success"] and dry_run["dry_run"]
    report = dry_run["tenants"][acme]
    assert figures(report, found) == found
    assert (report["repaired_missing"], report["removed_orphans"], report["finished_rows"],
            report["removed_stale_rows"]) == (0, 0, 0, 0)
    assert report["index_vectors_after"] == report["index_vectors_before"]
    assert dry_run["totals"]["tenants_with_drift"] == 1 and dry_run["totals"]["drift"] == found["drift"]
    # A dry run changes nothing, in the index or the ledger.
    assert open_index(acme).list_ids() == planted_index
    assert {cid: row["state"] for cid, row in ledger_chunks(ledger, acme).items()} == \
        {cid: row["state"] for cid, row in planted_rows.items()}

    result = pipeline.cli("reconcile", "--tenant", acme, "--json")
    repaired = json.loads(result.stdout)
    assert repaired["success"] and not repaired["dry_run"] and list(repaired["tenants"]) == [acme]
    report = repaired["tenants"][acme]
    fixed = {"repaired_missing": 1, "removed_orphans": 1, "finished_rows": 2, "removed_stale_rows": len(stale),
             "orphans_held_back": 0, "index_recreated": False, "index_vectors_after": len(live)}
    assert figures(report, found | fixed) == found | fixed
    assert figures(repaired["totals"], {"tenants_reconciled": 1, "repaired_missing": 1, "removed_orphans": 1}) == \
        {"tenants_reconciled": 1, "repaired_missing": 1, "removed_orphans": 1}

    # The index holds exactly what the ledger marks indexed, and nothing was embedded again.
    rows = ledger_chunks(ledger, acme)
    assert {row["state"] for row in rows.values()} == {"indexed"} and set(rows) == set(live)
    assert open_index(acme).list_ids() == set(live)
    assert ledger.tenants.status(acme).embeddings_computed == embeddings_computed
    again = cli_reconcile.reconcile(acme)["tenants"][acme]
    assert again["drift"] == again["repaired_missing"] == again["removed_orphans"] == again["finished_rows"] == 0
    assert_checks_pass_with_nothing_left_to_index(acme)


def test_a_lost_index_is_recreated_from_the_cold_copy_without_reembedding(pipeline, docs, tmp_path):
    acme, ledger, embeddings_computed = ingested_acme(pipeline, docs)
    indexed = ids_in_state(ledger, acme, "indexed")
    answer = pipeline.search(acme, PATENT_QUERY, 3)
    resources = build_resources()
    assert resources["cyborgdb"].indexes.drop(resources["keyring"].tenant_keys(acme))  # its storage is lost

    report_csv = tmp_path / "reconcile.csv"
    assert cli.main(["reconcile", "--tenant", acme, "--csv", str(report_csv)]) == 0
    with report_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["tenant_id"] for row in rows] == [acme]
    assert list(rows[0]) == list(REPORT_COLUMNS)
    expected = {"index_existed": "False", "missing": str(len(indexed)), "repaired_missing": str(len(indexed)),
                "index_recreated": "True", "index_vectors_after": str(len(indexed)), "orphans": "0"}
    assert figures(rows[0], expected) == expected
    assert "recreated from the cold copy" in rows[0]["note"]

    assert open_index(acme).list_ids() == indexed
    assert ledger.tenants.status(acme).embeddings_computed == embeddings_computed
    assert pipeline.search(acme, PATENT_QUERY, 3) == answer
    assert_checks_pass_with_nothing_left_to_index(acme)


def test_a_rebuild_in_progress_is_reconciled_too_so_its_swap_is_clean(embedded_pipeline, docs, monkeypatch):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    ledger = pipeline.ledger()
    indexed = ids_in_state(ledger, acme, "indexed")
    assert len(indexed) > 8  # the rebuild below stops after its first batch of 4

    real_upsert = TenantIndex.upsert

    def crash_after_the_first_rebuild_batch(self, items):  # fault injector
        if self.generation > 1 and self.count() > 0:
            raise Failure("injected: CyborgDB went away", allow_retries=False)  # no retries: faster, same state
        return real_upsert(self, items)

    monkeypatch.setattr(TenantIndex, "upsert", crash_after_the_first_rebuild_batch)
    rebuild_job = build_definitions().resolve_job_def("rebuild_tenant_index_job")
    config = {"ops": {"rebuild_index_from_cold_copy": {"config": {"tenant": acme, "upsert_batch_size": 4}}}}
    assert not rebuild_job.execute_in_process(run_config=config, instance=dagster_instance(),
                                              raise_on_error=False).success
    monkeypatch.setattr(TenantIndex, "upsert", real_upsert)
    with ledger.connect() as conn:
        live, rebuilding, cursor = ledger.tenants.generations(conn, acme)
    assert (live, rebuilding) == (1, 2)
    passed = sorted(cid for cid in indexed if cid <= cursor)
    assert len(passed) == 4

    # Drift in both generations: a count alone (the rebuild's completeness check) would not see it.
    open_index(acme, 1).delete([passed[0]])
    open_index(acme, 2).delete([passed[1]])
    open_index(acme, 2).upsert(orphan_items(1))

    report = cli_reconcile.reconcile(acme)["tenants"][acme]
    expected = {"live_generation": 1, "rebuilding_generation": 2, "missing": 1, "orphans": 0, "rebuild_missing": 1,
                "rebuild_orphans": 1, "repaired_missing": 2, "removed_orphans": 1, "index_vectors_after": len(indexed)}
    assert figures(report, expected) == expected
    assert "rebuild to generation 2 in progress" in report["note"]
    assert open_index(acme, 2).list_ids() == set(passed)

    assert cli.rebuild(acme)["success"]
    assert open_index(acme, 2).list_ids() == indexed
    assert cli_reconcile.reconcile(acme)["tenants"][acme]["drift"] == 0
    assert_checks_pass_with_nothing_left_to_index(acme)


def test_orphans_that_are_most_of_an_index_wait_for_confirmation(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    indexed = ids_in_state(pipeline.ledger(), acme, "indexed")
    orphans = orphan_items(len(indexed) + 1)
    open_index(acme).upsert(orphans)  # as if the ledger had been restored from a much older backup

    held = cli_reconcile.reconcile(acme)
    assert held["success"] is False and "allow_mass_delete" in held["error"]
    report = held["tenants"][acme]
    assert report["orphans"] == report["orphans_held_back"] == len(orphans) and report["removed_orphans"] == 0
    assert len(open_index(acme).list_ids()) == len(indexed) + len(orphans)

    confirmed = cli_reconcile.reconcile(acme, allow_mass_delete=True)
    assert confirmed["success"] and confirmed["tenants"][acme]["removed_orphans"] == len(orphans)
    assert open_index(acme).list_ids() == indexed

    unknown = cli_reconcile.reconcile("nobody-" + pipeline.suffix)
    assert unknown["success"] is False and "no ledger row" in unknown["error"] and unknown["tenants"] == {}


def _index_items(pipeline, tenant: str, keep=lambda name: True) -> list[dict]:
    """The tenant's index items as the IndexWriter makes them from the cold copy, with only the metadata `keep`
    lets through."""
    ledger, resources = pipeline.ledger(), build_resources()
    with ledger.tenant_writer(tenant) as session:
        writer = IndexWriter(ledger, resources["cyborgdb"].indexes, resources["keyring"], session)
        items = writer.items(ledger.chunks.with_embeddings(session.conn, tenant))
        writer.close()
    return [{**item, "metadata": {k: v for k, v in item["metadata"].items() if keep(k)}} for item in items]


def _to_the_vector_only_layout(pipeline, tenant: str) -> None:
    """Make the tenant's live index one built before the full-text field: layout 1, with the metadata of then."""
    items = _index_items(pipeline, tenant, keep=lambda name: name in {"doc_id", "tenant_id", "chunk_sequence"})
    resources = build_resources()
    indexes, keys = resources["cyborgdb"].indexes, resources["keyring"].tenant_keys(tenant)
    assert indexes.drop(keys)
    indexes.open(keys, dimension=384, create=True, layout=LAYOUT_VECTOR_ONLY).upsert(items)
    gc.collect()  # the embedded index is let go
    with pipeline.ledger().connect() as conn:
        conn.execute("UPDATE ingest.tenants SET index_layout = 1 WHERE tenant_id = %s", (tenant,))


def test_an_index_of_the_vector_only_layout_moves_by_rebuild_with_search_online(pipeline, docs, monkeypatch):
    """An index built before the full-text field answers by vector with a warning (never silently), refuses
    filters, and reconcile rebuilds it in the current layout from the cold copy (no re-embedding) while search
    keeps answering; a chunk whose text field is lost is found by reading its metadata back and restored."""
    acme, ledger, embeddings_computed = ingested_acme(pipeline, docs)
    indexed = ids_in_state(ledger, acme, "indexed")
    _to_the_vector_only_layout(pipeline, acme)

    assert figures(pipeline.status(acme), {"index_layout": 1, "search": "vector-only"}) == \
        {"index_layout": 1, "search": "vector-only"}
    fell_back = search_answers(acme, [PATENT_QUERY], 3)
    assert fell_back["requested_mode"] == "hybrid" and fell_back["mode"] == "vector"
    assert "ranked by vector only" in fell_back["warning"]
    assert {hit["score_kind"] for hit in fell_back["answers"][0]} == {"cosine"}
    with pytest.warns(SearchFellBack, match="vector only"):
        pipeline.search(acme, PATENT_QUERY, 3)
    shown = pipeline.cli("search", "--tenant", acme, "--json", PATENT_QUERY)
    assert "ranked by vector only" in shown.stderr and json.loads(shown.stdout)[0]["warning"]
    with pytest.raises(ValueError, match="predates the filter fields"):
        cli.search(acme, [PATENT_QUERY], 3, filters={"name": "apache-license-2.0.txt"})

    real_upsert, seen_during_rebuild = TenantIndex.upsert, []

    def search_while_rebuilding(self, items):  # a search between two batches of the rebuild
        if self.generation > 1 and not seen_during_rebuild:
            seen_during_rebuild.append(search_answers(acme, [PATENT_QUERY], 3))
        return real_upsert(self, items)

    monkeypatch.setattr(TenantIndex, "upsert", search_while_rebuilding)
    report = cli_reconcile.reconcile(acme)["tenants"][acme]
    monkeypatch.setattr(TenantIndex, "upsert", real_upsert)
    assert report["old_layout"] and report["layout_rebuilt"] and report["error"] == ""
    assert seen_during_rebuild and seen_during_rebuild[0]["answers"] == fell_back["answers"]
    assert figures(pipeline.status(acme), {"index_layout": 2, "search": "hybrid", "index_vectors": len(indexed)}) \
        == {"index_layout": 2, "search": "hybrid", "index_vectors": len(indexed)}
    hybrid = search_answers(acme, [PATENT_QUERY], 3)
    assert hybrid["warning"] is None and hybrid["mode"] == "hybrid"
    assert hybrid["answers"][0][0]["source"] == "apache-license-2.0.txt"
    assert {hit["score_kind"] for hit in hybrid["answers"][0]} == {"fused_rank"}
    assert ledger.tenants.status(acme).embeddings_computed == embeddings_computed
    assert cli_reconcile.reconcile(acme)["tenants"][acme]["drift"] == 0

    # A vector whose full-text field is missing (written without it behind the ledger's back): restored.
    with ledger.connect() as conn:
        live = ledger.tenants.generations(conn, acme).live
    victim = sorted(indexed)[0]
    [item] = [i for i in _index_items(pipeline, acme, keep=lambda name: name != TEXT_FIELD) if i["id"] == victim]
    open_index(acme, live).upsert([item])
    assert cli_reconcile.reconcile(acme, repair=False)["tenants"][acme]["text_missing"] == 1
    repaired = cli_reconcile.reconcile(acme)["tenants"][acme]
    assert (repaired["text_missing"], repaired["repaired_text"]) == (1, 1)
    assert open_index(acme, live).metadata([victim])[victim][TEXT_FIELD]
    assert cli_reconcile.reconcile(acme)["tenants"][acme]["drift"] == 0
