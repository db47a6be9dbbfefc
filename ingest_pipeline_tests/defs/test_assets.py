"""The asset graph end to end on real engines, on both CyborgDB backends."""

import json
import os
import shutil

import pytest
from dagster import MultiPartitionKey, materialize

from ingest_pipeline import cli
from ingest_pipeline.core.ids import chunk_id, document_id
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.defs.assets import raw_documents
from ingest_pipeline.runtime.instance import dagster_instance
from ingest_pipeline.stores.landing_zone import hash_file
from ingest_pipeline.stores.ledger import Document
from ingest_pipeline.work.uploads import current_month
from ingest_pipeline_tests.helpers import ledger_chunks, materialization_metadata, materialize_partition

MAGIC_QUERY = "What is the default priority of a magic rule?"
RARE_QUERY = "XR7-QUOKKA-5521"
# A question of benchmarks/data/sample_corpus_qa.jsonl whose answer ("atomically", in one chunk of the MIME spec)
# vector search ranks below its top 5 and hybrid search finds.
RARE_WORD_QUESTION, RARE_WORD = "files have to be written what - write to a temporary", "atomically"


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
    answers = json.loads(pipeline.cli("search", "--tenant", acme, "--top-k", "2", "--queries-file",
                                      str(queries)).stdout)
    assert [len(a) for a in answers] == [2, 0, 2]
    assert answers[0][0]["chunk_id"] == top["chunk_id"]
    assert answers[2][0]["source"] == "apache-license-2.0.txt"


def test_hybrid_search_is_the_default_and_finds_a_rare_word_that_vector_search_misses(pipeline, docs):
    """Ranked inside the encrypted index: hybrid (BM25 over the chunk text fused with the vectors) by default,
    vector or keyword on request, filters evaluated in the index; keyword search stays within its tenant."""
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    # The rare word inside a long chunk about something else: its embedding says little of the word.
    license_text = (docs / "apache-license-2.0.txt").read_text()
    middle = license_text.index("\n", len(license_text) // 2)
    (docs / "ops").mkdir()
    (docs / "ops" / "spares.txt").write_text(
        license_text[:middle] + " The spare controller carries serial XR7-QUOKKA-5521." + license_text[middle:])
    pipeline.upload(acme, docs)
    other = docs.parent / "globex"
    other.mkdir()
    shutil.copy(docs / "pip-dependency-resolution.md", other)
    pipeline.upload(globex, other)
    pipeline.ingest()

    vector = cli.search(acme, [RARE_WORD_QUESTION], 5, mode="vector")[0]
    assert not [hit for hit in vector if RARE_WORD in hit["text"]], [(h["source"], h["score"]) for h in vector]
    assert {hit["score_kind"] for hit in vector} == {"cosine"}
    hybrid = cli.search(acme, [RARE_WORD_QUESTION], 5)[0]
    assert [hit for hit in hybrid if RARE_WORD in hit["text"]] and hybrid[0]["score_kind"] == "fused_rank"
    assert [h["score"] for h in hybrid] == sorted((h["score"] for h in hybrid), reverse=True)
    keyword = cli.search(acme, [RARE_QUERY], 5, mode="keyword")[0]
    assert [(h["source"], h["score_kind"]) for h in keyword] == [("ops/spares.txt", "bm25")]
    assert "XR7-QUOKKA-5521" in keyword[0]["text"]
    # alpha weights the vector leg: at 1 the fused ranking is the vector ranking.
    at_one = cli.search(acme, [RARE_WORD_QUESTION], 5, alpha=1.0)[0]
    assert [h["chunk_id"] for h in at_one] == [h["chunk_id"] for h in vector]
    assert cli.search(globex, [RARE_QUERY], 5, mode="keyword") == [[]]  # one index per tenant
    shown = json.loads(pipeline.cli("search", "--tenant", acme, "--mode", "keyword", "--json", RARE_QUERY).stdout)
    assert [(h["source"], h["score_kind"], h["warning"]) for h in shown] == [("ops/spares.txt", "bm25", None)]

    for bad, reason in (({"mode": "fuzzy"}, "mode"), ({"alpha": 1.5}, "alpha"), ({"mode": "vector", "alpha": 0.5},
                        "alpha"), ({"filters": {"format": "word"}}, "format"), ({"filters": {"name_prefix": "op"}},
                        "name_prefix"), ({"filters": {"month_from": "2026-13"}}, "month_from"),
                        ({"filters": {"size": 3}}, "size")):
        with pytest.raises(ValueError, match=reason):
            cli.search(acme, [RARE_QUERY], 5, **bad)
    refused = pipeline.cli("search", "--tenant", acme, "--alpha", "2", RARE_QUERY, check=False)
    assert refused.returncode == 2 and "alpha" in refused.stderr

    # Filters run inside the index: top_k hits, all of them matching (a filter after the fact would leave fewer).
    def sources(**filters) -> list[str]:
        return [hit["source"] for hit in cli.search(acme, [MAGIC_QUERY], 5, filters=filters)[0]]

    assert sources(name="apache-license-2.0.txt") == ["apache-license-2.0.txt"] * 5
    assert sources(name_prefix="ops/") == ["ops/spares.txt"] * 5
    month = current_month()[:7]
    assert len(sources(month_from=month, month_to=month)) == 5
    assert sources(month_to=f"{int(month[:4]) - 1}-12") == []
    assert [h["source"] for h in cli.search(acme, [RARE_QUERY], 5, mode="keyword",
                                            filters={"name_prefix": "ops/"})[0]] == ["ops/spares.txt"]
    assert cli.search(acme, [RARE_QUERY], 5, mode="keyword", filters={"name": "apache-license-2.0.txt"}) == [[]]
    # Each document's format, recorded in the ledger when it was chunked and held by its items in the index.
    with pipeline.ledger().connect() as conn:
        formats = {row["doc_name"]: row["format"] for row in conn.execute(
            "SELECT doc_name, format FROM ingest.documents WHERE tenant_id = %s", (acme,))}
    assert formats == {"apache-license-2.0.txt": "text", "ops/spares.txt": "text", "shared-mime-info-spec.pdf": "pdf",
                       "pip-dependency-resolution.md": "markdown", "debian-users-and-groups.html": "html"}
    assert sources(format="pdf") == ["shared-mime-info-spec.pdf"] * 5
    assert len(sources(format="text")) == 5 and set(sources(format="text")) <= {"apache-license-2.0.txt",
                                                                               "ops/spares.txt"}
    assert sources(format="docx") == []
    assert sources(format="text", name_prefix="ops/") == ["ops/spares.txt"] * 5
    shown = json.loads(pipeline.cli("search", "--tenant", acme, "--json", "--format", "markdown", "--month-to",
                                    month, MAGIC_QUERY).stdout)
    assert [h["source"] for h in shown] == ["pip-dependency-resolution.md"] * 5
    refused = pipeline.cli("search", "--tenant", acme, "--format", "word", MAGIC_QUERY, check=False)
    assert refused.returncode == 2 and "--format" in refused.stderr and "markdown" in refused.stderr


def test_a_document_deleted_before_it_was_ever_ingested_leaves_no_pending_work(embedded_pipeline, docs):
    pipeline = embedded_pipeline  # nothing reaches an index: one backend is enough
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
    embedded_before = ledger.tenants.status(acme).embeddings_computed
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
    assert ledger.tenants.status(acme).embeddings_computed == embedded_before

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
    recomputed = ledger.tenants.status(acme).embeddings_computed - embedded_before
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


def test_index_rebuilds_from_the_cold_copy_without_reembedding(embedded_pipeline, docs):
    pipeline = embedded_pipeline  # the service's rebuild: test_data_safety's rebuild test, on both backends
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    pipeline.ingest()
    ledger = pipeline.ledger()
    embedded = ledger.tenants.status(acme).embeddings_computed
    resources = build_resources()
    keys = resources["keyring"].tenant_keys(acme)
    assert resources["cyborgdb"].indexes.drop(keys)
    assert pipeline.status(acme)["index_vectors"] == 0

    result = pipeline.cli("rebuild", "--tenant", acme, "--json")
    assert '"success": true' in result.stdout
    status = pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert ledger.tenants.status(acme).embeddings_computed == embedded
    assert pipeline.search(acme, MAGIC_QUERY, 1)[0]["source"] == "shared-mime-info-spec.pdf"
    check_run = materialize_partition(acme)
    assert all(check.passed for check in check_run.get_asset_check_evaluations())


def test_a_section_inserted_at_the_start_embeds_only_the_new_text(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    document = docs / "pip-dependency-resolution.md"
    pipeline.upload(acme, document)
    pipeline.ingest()
    ledger = pipeline.ledger()
    embedded_before = ledger.tenants.status(acme).embeddings_computed
    keyring = build_resources()["keyring"]
    before = next(row for row in ledger_chunks(ledger, acme).values() if row["sequence"] == 4)
    cited_before = keyring.encryptor(acme, before["key_version"]).decrypt_citation(
        before["chunk_id"], before["citation_ciphertext"], before["text_mac"], before["seal_format"])
    assert cited_before.section  # the document's headings

    # Every later chunk moves one sequence number down: same texts under other chunk ids.
    preface = "# Preface\n\nZebra crossings in Lisbon are painted white and black.\n\n"
    document.write_text(preface + document.read_text())
    pipeline.upload(acme, document)
    result = materialize_partition(acme)
    assert result.success
    chunks = ledger_chunks(ledger, acme)
    assert len(chunks) == embedded_before + 1
    assert ledger.tenants.status(acme).embeddings_computed - embedded_before == 1  # the preface's chunk only
    chunked = materialization_metadata(result, "document_chunks")
    assert chunked["embeddings_reused"] == embedded_before
    assert chunked["model_preloaded"] is True  # in-process: the embedding step uses the model loaded meanwhile
    status = pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] == len(chunks)
    hits = pipeline.search(acme, "How does pip resolve dependency conflicts?", 3)
    assert hits and all(hit["source"] == document.name for hit in hits)
    assert pipeline.search(acme, "What colour are zebra crossings in Lisbon?", 1)[0]["chunk_sequence"] == 0
    # A moved chunk's vector is its text's own, sealed for its new id: its text as the query finds that chunk, with
    # its citation sealed for the new id too (the same section: the preface heading closed before it).
    moved = next(row for row in ledger_chunks(ledger, acme).values() if row["sequence"] == 5)
    assert moved["text_mac"] == before["text_mac"]
    text = keyring.encryptor(acme, moved["key_version"]).decrypt_text(
        moved["chunk_id"], moved["text_ciphertext"], moved["text_mac"], moved["seal_format"])
    top = cli.search(acme, [text], 1, mode="vector")[0][0]  # the vector itself: its cosine score
    assert top["chunk_id"] == moved["chunk_id"] and top["score"] > 0.99
    assert (top["page"], top["section"]) == tuple(cited_before)


# --- quarantine: what the document caused, and what the machine caused ------------------------------------------


def _quarantine_cli(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli.main(["quarantine", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_document_quarantined_by_a_tiny_time_limit_is_ingested_once_the_limit_is_back(
        embedded_pipeline, docs, monkeypatch, capsys):
    """The user's reproduction: `INGEST_EXTRACTION_TIMEOUT_S=0.01 ingest`, then `ingest` with the default."""
    pipeline, acme = embedded_pipeline, embedded_pipeline.tenant("acme")
    names = ["apache-license-2.0.txt", "pip-dependency-resolution.md"]
    pipeline.upload(acme, *(docs / name for name in names))
    # Far less than a fresh worker needs to load its tokenizer: every document runs out of time.
    monkeypatch.setenv("INGEST_EXTRACTION_TIMEOUT_S", "0.01")
    summary = pipeline.ingest(acme)
    assert {q["document"]: (q["code"], q["limits"]) for q in summary["quarantined"][acme]} == \
        {name: ("time-limit", {"timeout_s": 0.01}) for name in names}
    code, listed = _quarantine_cli(capsys, "--tenant", acme)
    assert code == 0
    assert [(q["tenant"], q["document"], q["code"], q["limits"]) for q in listed["quarantined"]] == \
        [(acme, name, "time-limit", {"timeout_s": 0.01}) for name in names]
    assert all(q["reason"] and q["quarantined_at"] for q in listed["quarantined"])

    # The same settings skip them, as before; re-uploading the same bytes changes nothing.
    assert pipeline.ingest(acme)["runs"] == []
    assert sorted(pipeline.upload(acme, *(docs / name for name in names))["unchanged"]) == names

    # The default limit is larger than the one they failed under: the next run tries them again.
    monkeypatch.delenv("INGEST_EXTRACTION_TIMEOUT_S")
    summary = pipeline.ingest(acme)
    assert summary["quarantined"][acme] == [] and summary["totals"]["chunks_upserted"] > 0
    status = pipeline.status(acme)
    assert status["quarantined"] == 0 and status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert pipeline.search(acme, "What does the Apache License say about patents?", 1)[0]["source"] == names[0]
    assert _quarantine_cli(capsys, "--tenant", acme)[1] == {"quarantined": []}


def test_a_worker_that_cannot_start_or_is_killed_leaves_documents_pending_never_quarantined(
        embedded_pipeline, docs, monkeypatch, tmp_path):
    pipeline, acme = embedded_pipeline, embedded_pipeline.tenant("acme")
    names = ["apache-license-2.0.txt", "pip-dependency-resolution.md"]
    pipeline.upload(acme, *(docs / name for name in names))

    # No worker starts (as with a fork refused by the system): the run fails after its retries, naming why,
    # and the documents are still pending, not quarantined.
    monkeypatch.setenv("INGEST_FAULTS", "extract:worker-start=kill")
    summary = cli.ingest(acme, show_progress=False)
    assert summary["failed_runs"] == 1  # `ingest` exits 1
    assert "did not start" in summary["runs"][0]["error"] and "tried again" in summary["runs"][0]["error"]
    assert summary["quarantined"][acme] == []
    counts = pipeline.ledger().tenants.status(acme)
    assert counts.quarantined == 0 and counts.pending_documents == len(names)

    # A worker killed mid-document (the out-of-memory killer's SIGKILL), once: the step's retry policy tries it
    # again in the same run, and the run succeeds with every document indexed.
    monkeypatch.setenv("INGEST_FAULTS", "extract:document=kill-once")
    monkeypatch.setenv("INGEST_FAULTS_STATE", str(tmp_path / "faults"))
    summary = pipeline.ingest(acme)
    assert (tmp_path / "faults" / "extract__document").exists()  # the fault did fire
    assert summary["quarantined"][acme] == []
    status = pipeline.status(acme)
    assert status["documents"] == len(names) and status["quarantined"] == 0
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert pipeline.search(acme, "What does the Apache License say about patents?", 1)[0]["source"] == names[0]


def test_a_document_whose_worker_is_killed_every_time_is_quarantined_as_crashed_not_retried_for_ever(
        embedded_pipeline, docs, monkeypatch):
    pipeline, acme = embedded_pipeline, embedded_pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    # The host's out-of-memory killer stops the worker on this document every time: after three tries in a row
    # (the step's retries, in one run) it is quarantined as crashed under the memory limit, and the run succeeds.
    monkeypatch.setenv("INGEST_FAULTS", "extract:document=kill")
    summary = pipeline.ingest(acme)
    assert [(q["document"], q["code"], q["limits"]) for q in summary["quarantined"][acme]] == \
        [("apache-license-2.0.txt", "crashed", {"memory_mb": 1024})]
    assert pipeline.ingest(acme)["runs"] == []  # the same settings leave it alone

    # More memory is a reason to try again: the next run reads it.
    monkeypatch.delenv("INGEST_FAULTS")
    monkeypatch.setenv("INGEST_EXTRACTION_MEMORY_MB", "1536")
    summary = pipeline.ingest(acme)
    assert summary["quarantined"][acme] == [] and summary["totals"]["chunks_upserted"] > 0
    assert pipeline.search(acme, "What does the Apache License say about patents?", 1)[0]["source"] == (
        "apache-license-2.0.txt")


def test_a_corrupt_document_stays_quarantined_under_any_limits_until_retried_by_hand(
        embedded_pipeline, docs, monkeypatch, capsys, tmp_path):
    pipeline, acme = embedded_pipeline, embedded_pipeline.tenant("acme")
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40)
    pipeline.upload(acme, tmp_path / "corrupt.pdf", docs / "apache-license-2.0.txt")
    summary = pipeline.ingest(acme)
    assert [(q["document"], q["code"], q.get("limits")) for q in summary["quarantined"][acme]] == \
        [("corrupt.pdf", "corrupt-pdf", None)]

    # Larger limits are no reason to read the same corrupt bytes again.
    monkeypatch.setenv("INGEST_EXTRACTION_TIMEOUT_S", "120")
    monkeypatch.setenv("INGEST_EXTRACTION_MEMORY_MB", "2048")
    assert pipeline.ingest(acme)["runs"] == []
    code, listed = _quarantine_cli(capsys, "--tenant", acme)
    assert [(q["document"], q["code"], q["limits"]) for q in listed["quarantined"]] == \
        [("corrupt.pdf", "corrupt-pdf", None)]

    # `quarantine retry` clears the record: the next ingest reads the document again (and quarantines it again).
    capsys.readouterr()
    assert cli.main(["quarantine", "retry", "--tenant", acme, "corrupt.pdf", "--json"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared == {"tenant": acme, "cleared": [{"document": "corrupt.pdf", "code": "corrupt-pdf", "limits": None}],
                       "not_quarantined": []}
    assert _quarantine_cli(capsys, "--tenant", acme)[1] == {"quarantined": []}
    assert pipeline.ledger().tenants.status(acme).pending_documents == 1
    summary = pipeline.ingest(acme)
    assert len(summary["runs"]) == 1 and summary["totals"]["documents_quarantined"] == 1
    assert [q["document"] for q in summary["quarantined"][acme]] == ["corrupt.pdf"]

    # A name not in quarantine is reported.
    capsys.readouterr()
    assert cli.main(["quarantine", "retry", "--tenant", acme, "apache-license-2.0.txt"]) == 1
    assert "not quarantined" in capsys.readouterr().out

    # An installation from before causes were told apart: the old code quarantined a document whose worker did not
    # start as `unreadable (RuntimeError)`. Its upgrade (migration 0010) gives that one another try, not the corrupt.
    ledger = pipeline.ledger()
    with ledger.connect() as conn, conn.transaction():
        apache = Document(**conn.execute("SELECT * FROM ingest.documents WHERE tenant_id = %s AND doc_name = %s",
                                         (acme, "apache-license-2.0.txt")).fetchone())
        ledger.quarantine.add(conn, apache, apache.content_sha256, "unreadable (RuntimeError)", "parser-error")
        conn.execute("ALTER TABLE ingest.quarantine DROP COLUMN limits")
        conn.execute("DELETE FROM ingest.schema_migrations WHERE version = 10")
    assert ledger.migrate() == [10]
    assert [q.doc_name for q in ledger.quarantine.listed(acme)] == ["corrupt.pdf"]
    assert ledger.tenants.status(acme).pending_documents == 1

    # Without names every quarantined document of the tenant is cleared.
    capsys.readouterr()
    assert cli.main(["quarantine", "retry", "--tenant", acme]) == 0
    assert "cleared [corrupt-pdf]" in capsys.readouterr().out


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
        ledger.uploads.record(conn, tenant_id=acme, doc_id=document_id(acme, "added.txt"), doc_name="added.txt",
                             content_sha256=hash_file(landing / "added.txt")[1], size_bytes=None, is_delete=False,
                             partition_month=current_month())
    second = run()
    assert second["documents_new"] == 1 and second["files_hashed"] == 1
    os.utime(landing / "note-3.txt", ns=(1_700_000_000_000_000_000,) * 2)
    third = run()
    assert third["files_hashed"] == 1 and third["documents_changed"] == 0
    # What was hashed and found the same is remembered: the next run hashes nothing.
    assert run()["files_hashed"] == 0
