"""The asset graph end to end on real engines, on both CyborgDB backends."""

import json
import os

from dagster import MultiPartitionKey, materialize

from ingest_pipeline.core.ids import chunk_id, document_id
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.defs.assets import raw_documents
from ingest_pipeline.instance import dagster_instance
from ingest_pipeline.landing import hash_file
from ingest_pipeline.uploads import current_month
from ingest_pipeline_tests.helpers import ledger_chunks, materialization_metadata, materialize_partition

MAGIC_QUERY = "What is the default priority of a magic rule?"


def test_ingest_indexes_every_chunk_and_search_finds_it(pipeline, docs):
    acme = pipeline.tenant("acme")
    uploaded = pipeline.upload(acme, docs)
    assert sorted(uploaded["uploaded"]) == sorted(p.name for p in docs.iterdir())

    summary = pipeline.ingest()
    assert summary["totals"]["documents_new"] == 4
    assert summary["failed_checks"] == 0
    assert [run["checks_passed"] for run in summary["runs"]] == [3]

    status = pipeline.status(acme)
    assert status["documents"] == 4 and status["quarantined"] == 0
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 20

    hits = pipeline.search(acme, MAGIC_QUERY, top_k=3)
    assert len(hits) == 3
    top = hits[0]
    assert top["source"] == "shared-mime-info-spec.pdf"
    assert "default priority value is 50" in " ".join(top["text"].split())
    assert top["doc_id"] == document_id(acme, "shared-mime-info-spec.pdf")
    assert top["chunk_id"] == chunk_id(top["doc_id"], top["chunk_sequence"])
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    # Many queries in one process, one answer list per line, in order, blank lines kept.
    queries = pipeline.home.parent / "queries.txt"
    queries.write_text(f"{MAGIC_QUERY}\n\nWhat does the Apache License say about patents?\n")
    answers = json.loads(pipeline.run_cli("search", "--tenant", acme, "--top-k", "2", "--queries-file",
                                          str(queries)).stdout)
    assert [len(a) for a in answers] == [2, 0, 2]
    assert answers[0][0]["chunk_id"] == top["chunk_id"]
    assert answers[2][0]["source"] == "apache-license-2.0.txt"


def test_a_document_deleted_before_it_was_ever_ingested_leaves_no_pending_work(pipeline, docs):
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    assert pipeline.upload(acme, "apache-license-2.0.txt", delete=True)["deleted"] == ["apache-license-2.0.txt"]
    assert len(pipeline.ingest()["runs"]) == 1
    assert pipeline.ingest()["runs"] == []
    assert pipeline.status(acme)["documents"] == 0


def test_rematerializing_changes_nothing_and_changes_and_deletes_propagate(pipeline, docs):
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    pipeline.ingest()
    ledger = pipeline.ledger()
    before = ledger_chunks(ledger, acme)
    embedded_before = ledger.tenant_status(acme)["embeddings_computed"]
    assert embedded_before == len(before)

    # Identical bytes again: no upload, no pending work.
    assert sorted(pipeline.upload(acme, docs)["unchanged"]) == sorted(p.name for p in docs.iterdir())
    assert pipeline.ingest()["runs"] == []

    # The partition materialized again (a retry, a backfill): the same ids, the same ciphertexts.
    result = materialize_partition(acme)
    assert result.success
    assert materialization_metadata(result, "raw_documents")["documents_unchanged"] == 4
    assert materialization_metadata(result, "chunk_embeddings")["chunks_embedded"] == 0
    after = ledger_chunks(ledger, acme)
    assert after.keys() == before.keys()
    assert all(after[c]["text_ciphertext"] == before[c]["text_ciphertext"] for c in before)
    assert ledger.tenant_status(acme)["embeddings_computed"] == embedded_before

    # A changed document: shorter, with a new closing paragraph. Its stale chunks leave both stores.
    changed = docs / "pip-dependency-resolution.md"
    text = changed.read_text()
    changed.write_text(text[: len(text) // 3] + "\n\nZebra crossings in Lisbon are painted white and black.\n")
    pipeline.upload(acme, changed)
    summary = pipeline.ingest()
    assert summary["totals"]["documents_changed"] == 1
    assert summary["totals"]["chunks_removed"] > 0
    doc = document_id(acme, changed.name)
    old = {c for c, row in before.items() if row["doc_id"] == doc}
    new = {c for c, row in ledger_chunks(ledger, acme).items() if row["doc_id"] == doc}
    assert new < old
    recomputed = ledger.tenant_status(acme)["embeddings_computed"] - embedded_before
    assert 1 <= recomputed <= len(new)  # unchanged leading chunks kept their embeddings
    status = pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] == len(after) - len(old) + len(new)
    assert pipeline.search(acme, "What colour are zebra crossings in Lisbon?", 1)[0]["source"] == changed.name

    # An explicit delete.
    pipeline.upload(acme, changed.name, delete=True)
    pipeline.ingest()
    status = pipeline.status(acme)
    assert status["documents"] == 3
    assert status["chunks"] == status["indexed"] == status["index_vectors"] == len(after) - len(old)
    assert all(hit["source"] != changed.name for hit in pipeline.search(acme, "zebra crossings Lisbon", 10))

    # A removal from the landing zone: the next ingest notices it.
    (pipeline.home / "landing" / acme / "apache-license-2.0.txt").unlink()
    assert pipeline.ingest()["totals"]["documents_deleted"] == 1
    assert pipeline.ingest()["runs"] == []
    status = pipeline.status(acme)
    assert status["documents"] == 2
    assert status["chunks"] == status["indexed"] == status["index_vectors"]
    assert all(h["source"] != "apache-license-2.0.txt" for h in pipeline.search(acme, "Apache License", 10))


def test_index_rebuilds_from_the_cold_copy_without_reembedding(pipeline, docs):
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    pipeline.ingest()
    ledger = pipeline.ledger()
    embedded = ledger.tenant_status(acme)["embeddings_computed"]
    resources = build_resources()
    keys = resources["keyring"].tenant_keys(acme)
    assert resources["cyborgdb"].indexes.drop(keys)
    assert pipeline.status(acme)["index_vectors"] == 0

    result = pipeline.run_cli("rebuild", "--tenant", acme, "--json")
    assert '"success": true' in result.stdout
    status = pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert ledger.tenant_status(acme)["embeddings_computed"] == embedded
    assert pipeline.search(acme, MAGIC_QUERY, 1)[0]["source"] == "shared-mime-info-spec.pdf"
    check_run = materialize_partition(acme)
    assert all(check.passed for check in check_run.get_asset_check_evaluations())


def test_a_rerun_hashes_only_the_files_whose_size_or_time_changed(embedded_pipeline, tmp_path):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    folder = tmp_path / "notes"
    folder.mkdir()
    for n in range(6):
        (folder / f"note-{n}.txt").write_text(f"Note {n}: the quarterly figures are in the shared drive.\n")
    pipeline.upload(acme, *sorted(folder.iterdir()))
    partition = MultiPartitionKey({"tenant": acme, "month": current_month()})

    def run() -> dict:
        result = materialize([raw_documents], partition_key=partition, resources=build_resources(),
                             instance=dagster_instance())
        return materialization_metadata(result, "raw_documents")

    # Uploaded files were hashed when recorded, with their size and time: the run hashes none of them.
    first = run()
    assert first["documents_new"] == 6 and first["files_hashed"] == 0

    # One more file, recorded by another system without its size or time; and one file touched, same bytes.
    landing = pipeline.home / "landing" / acme
    (landing / "added.txt").write_text("A seventh note, written straight into the landing zone.\n")
    ledger = pipeline.ledger()
    with ledger.connect() as conn, conn.transaction():
        ledger.record_upload(conn, tenant_id=acme, doc_id=document_id(acme, "added.txt"), doc_name="added.txt",
                             content_sha256=hash_file(landing / "added.txt")[1], size_bytes=None, is_delete=False,
                             partition_month=current_month())
    second = run()
    assert second["documents_new"] == 1 and second["files_hashed"] == 1
    os.utime(landing / "note-3.txt", ns=(1_700_000_000_000_000_000,) * 2)
    third = run()
    assert third["files_hashed"] == 1 and third["documents_changed"] == 0
    # What was hashed and found the same is remembered: the next run hashes nothing.
    assert run()["files_hashed"] == 0
