"""Bad input, concurrency and faults: nothing acknowledged is lost, nothing is written twice."""

import io
import subprocess
import sys

import pytest
from dagster import DagsterEventType
from pypdf import PdfReader, PdfWriter

from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.vector_index import TenantIndex
from tests.integration.conftest import CORPUS
from tests.integration.helpers import materialize_partition, step_events


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
        "slides.docx": (b"PK\x03\x04 confidential board slides", "unsupported format"),
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
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs)
    env = {**__import__("os").environ, **embedded_pipeline.env}
    command = [sys.executable, "-m", "ingest_pipeline.cli", "ingest", "--tenant", acme, "--json"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for process in (first, second):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]

    status = embedded_pipeline.status(acme)
    assert status["documents"] == 4
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    # Every chunk was embedded exactly once across both processes.
    assert embedded_pipeline.ledger().tenant_status(acme)["embeddings_computed"] == status["chunks"]


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


def test_a_wrong_master_key_fails_fast_without_retrying(embedded_pipeline, docs, monkeypatch):
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    embedded_pipeline.ingest()

    monkeypatch.setenv("INGEST_MASTER_KEY", generate_master_key())
    embedded_pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    result = materialize_partition(acme)
    assert not result.success
    assert step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, "cyborgdb_index") == []
    failures = step_events(result.run_id, DagsterEventType.STEP_FAILURE, "cyborgdb_index")
    assert len(failures) == 1
    message = failures[0].dagster_event.step_failure_data.error.message
    assert "does not open with this master key" in message


@pytest.mark.parametrize("bad_tenant", ["Acme", "../etc", "a b", ""])
def test_invalid_tenant_names_are_refused_by_the_cli(embedded_pipeline, docs, bad_tenant):
    result = embedded_pipeline.run_cli("upload", "--tenant", bad_tenant, str(docs), check=False)
    assert result.returncode == 2
    assert "invalid tenant id" in result.stderr
