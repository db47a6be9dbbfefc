"""Bad input, concurrency and faults: nothing acknowledged is lost, nothing is written twice."""

import io
import json
import os
import subprocess
import sys

import pytest
from dagster import DagsterEventType
from pypdf import PdfReader, PdfWriter

from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.stores.tenant_index import TenantIndex
from ingest_pipeline_tests.helpers import CORPUS, ledger_chunks, materialize_partition, step_events


def _encrypted_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_page(PdfReader(CORPUS / "acme/shared-mime-info-spec.pdf").pages[0])
    writer.encrypt(user_password="s3cret", owner_password="owner")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_unreadable_documents_are_quarantined_and_the_rest_indexed(embedded_pipeline, docs, tmp_path):
    acme = embedded_pipeline.tenant("acme")
    bad = tmp_path / "bad"
    bad.mkdir()
    hostile = {
        "corrupt.pdf": (b"%PDF-1.7\n" + bytes(range(256)) * 40, "corrupt PDF"),
        "locked.pdf": (_encrypted_pdf(), "encrypted PDF"),
        "empty.txt": (b"", "empty document"),
        "binary.txt": (b"\x7fELF\x02\x01\x01\x00" + bytes(4096), "not text"),
        "slides.docx": (b"PK\x03\x04 confidential board slides", "corrupt document"),
    }
    for name, (data, _) in hostile.items():
        (bad / name).write_bytes(data)
    embedded_pipeline.upload(acme, docs, *sorted(bad.iterdir()))

    summary = embedded_pipeline.ingest()
    reasons = {q["document"]: q["reason"] for q in summary["quarantined"][acme]}
    assert reasons.keys() == hostile.keys()
    for name, (_, expected) in hostile.items():
        assert expected in reasons[name]
    assert "confidential" not in str(summary)
    status = embedded_pipeline.status(acme)
    assert status["documents"] == 9 and status["quarantined"] == 5
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert summary["failed_checks"] == 0

    # The user fixes a document: it leaves quarantine and is indexed.
    (bad / "empty.txt").write_text("Quarantine is lifted once the document is readable again.\n")
    embedded_pipeline.upload(acme, bad / "empty.txt")
    embedded_pipeline.ingest()
    assert embedded_pipeline.status(acme)["quarantined"] == 4
    assert embedded_pipeline.search(acme, "when is quarantine lifted?", 1)[0]["source"] == "empty.txt"


def test_two_ingests_of_one_tenant_at_once_index_every_chunk_once(embedded_pipeline, docs):
    pipeline = embedded_pipeline  # the tenant's lock is in Postgres; races on the service: reliability/test_races
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    env = {**os.environ, **pipeline.env}
    command = [sys.executable, "-m", "ingest_pipeline.cli", "ingest", "--tenant", acme, "--json"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    summaries = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        summaries.append(json.loads(stdout))
    # Both processes found the partition pending and ran it: the runs really overlapped.
    assert [len(summary["runs"]) for summary in summaries] == [1, 1]

    status = pipeline.status(acme)
    assert status["documents"] == 4
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    # Every chunk was embedded exactly once across both processes.
    assert pipeline.ledger().tenants.status(acme).embeddings_computed == status["chunks"]


def test_a_failed_upsert_rolls_back_its_batch_and_the_step_retries(embedded_pipeline, docs, monkeypatch):
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs)
    real_upsert, calls = TenantIndex.upsert, {"n": 0}

    def flaky_upsert(self, items):  # fault injector: the third batch fails once
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("injected: connection reset by peer")
        return real_upsert(self, items)

    monkeypatch.setattr(TenantIndex, "upsert", flaky_upsert)
    result = materialize_partition(acme)
    assert result.success
    assert len(step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, "cyborgdb_index")) == 1
    status = embedded_pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_a_wrong_master_key_fails_fast_and_writes_nothing(embedded_pipeline, docs, monkeypatch):
    pipeline = embedded_pipeline  # refused before any index is opened
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    ledger = pipeline.ledger()
    before = ledger_chunks(ledger, acme)

    right_key = os.environ["INGEST_MASTER_KEY"]
    monkeypatch.setenv("INGEST_MASTER_KEY", generate_master_key())
    pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    result = materialize_partition(acme)
    assert not result.success
    failures = step_events(result.run_id, DagsterEventType.STEP_FAILURE, "raw_documents")
    assert len(failures) == 1
    assert "written under another master key" in failures[0].dagster_event.step_failure_data.error.message
    assert step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, "raw_documents") == []
    assert ledger_chunks(ledger, acme).keys() == before.keys()

    # With the right key back, the tenant carries on as if nothing had happened.
    monkeypatch.setenv("INGEST_MASTER_KEY", right_key)
    pipeline.ingest()
    status = pipeline.status(acme)
    assert status["documents"] == 2
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > len(before)


def test_one_upload_never_gives_two_files_one_name(embedded_pipeline, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n")
    result = embedded_pipeline.cli("upload", "--tenant", embedded_pipeline.tenant("acme"),
                                   str(tmp_path / "a" / "README.md"), str(tmp_path / "b" / "README.md"),
                                   check=False)
    assert result.returncode == 2
    assert "several files would be uploaded as README.md" in result.stderr


@pytest.mark.parametrize("bad_tenant", ["Acme", "../etc", "a b", ""])
def test_invalid_tenant_names_are_refused_by_the_cli(embedded_pipeline, docs, bad_tenant):
    result = embedded_pipeline.cli("upload", "--tenant", bad_tenant, str(docs), check=False)
    assert result.returncode == 2
    assert "invalid tenant id" in result.stderr
