"""The leak scan: no chunk text, citation, vector or key of any installation the session created is stored or logged in
clear (Postgres rows and files, CyborgDB's files and the service's log, Dagster's event log and compute logs,
exception texts). The reliability conftest puts this module after every other test of the session, so it scans
their installations too; alone, its own scenario makes the scan meaningful."""

import base64
import json
import re
import traceback
from pathlib import Path

import numpy as np
import psycopg
import pytest

from ingest_pipeline import cli
from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.core.ids import document_id
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline.stores.tenant_index import TenantIndex
from ingest_pipeline_tests import helpers
from ingest_pipeline_tests.helpers import ledger_chunks, new_installation
from ingest_pipeline_tests.reliability import leaks


class _QuotingHandle:
    """Fault injector: a CyborgDB handle whose upserts always fail with an error that quotes the request,
    its vector and the index key, as an SDK's validation error can."""

    calls = 0

    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def upsert(self, items, **kwargs):
        _QuotingHandle.calls += 1
        key = kwargs.get("index_key")
        raise ValueError(f"422 unprocessable: id={items[0]['id']} vector={np.asarray(items[0]['vector']).tolist()} "
                         f"index_key={key.hex() if isinstance(key, bytes) else key}")


def _ingest_with_failures(pipeline, docs, monkeypatch, caught: dict) -> None:
    """One installation's scenario: a clean ingest, a run that fails in CyborgDB with a quoting error, a run and
    a search under a wrong master key. Exception texts that reach this process go into `caught`."""
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    # The PDF (the largest document) on one backend only: the scenario's runtime is mostly embedding.
    extra = docs / ("shared-mime-info-spec.pdf" if pipeline.backend == "embedded" else "debian-users-and-groups.html")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", extra)
    pipeline.ingest()
    assert pipeline.search(acme, "What does the license say about patents?")

    # A run that fails: every upsert to CyborgDB raises an error that quotes the vector and the key.
    pipeline.upload(globex, docs / "pip-dependency-resolution.md")
    real_init = TenantIndex.__init__
    with monkeypatch.context() as patch:
        patch.setattr(TenantIndex, "__init__", lambda self, tenant, handle, *a, **k:
                      real_init(self, tenant, _QuotingHandle(handle), *a, **k))
        calls = _QuotingHandle.calls
        summary = cli.ingest(show_progress=False)
    assert summary["failed_runs"] == 1 and _QuotingHandle.calls > calls, summary["runs"]
    caught[f"{pipeline.backend}: CyborgDB failure"] = json.dumps(summary["runs"])

    # A run and a search under another master key: refused, with an exception text.
    (docs.parent / f"later-{pipeline.backend}.md").write_text(  # a distinctive heading: a citation to look for
        "# Later notes\n\n## Halvorsen cold vault schedule\n\n"
        "The quarterly archive of sealed ledgers moves to the cold vault after review.\n")
    pipeline.upload(acme, docs.parent / f"later-{pipeline.backend}.md")
    with monkeypatch.context() as patch:
        patch.setenv("INGEST_MASTER_KEY", generate_master_key())
        summary = cli.ingest(show_progress=False)
        assert summary["runs"] and summary["failed_runs"] == len(summary["runs"]), summary["runs"]
        caught[f"{pipeline.backend}: wrong master key run"] = json.dumps(summary["runs"])
        with pytest.raises(Exception) as refused:
            pipeline.search(acme, "Where do sealed ledgers go?")
        caught[f"{pipeline.backend}: wrong master key search"] = "".join(traceback.format_exception(refused.value))
    pipeline.ingest()  # with the right key again: the pending work completes


def test_the_scanner_finds_planted_text_vectors_and_keys(embedded_pipeline, docs, scenario):
    """A chunk sentence, a section heading, a vector's bytes and keys planted in files, rows (compressed too) and
    exception text are each found, and the findings never quote them."""
    scenario.category = "leak-scan"
    pipeline = embedded_pipeline
    helpers.INSTALLATIONS.remove(pipeline)  # planted leaks must not fail the session's scan
    acme = pipeline.tenant("acme")
    heading = "Brightwater escrow release conditions"
    (docs.parent / "escrow.md").write_text(f"# Escrow\n\n## {heading}\n\nFunds are released after the audit.\n")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs.parent / "escrow.md")
    pipeline.ingest()
    keyring = build_resources()["keyring"]
    keys = keyring.tenant_keys(acme)
    license_doc = document_id(acme, "apache-license-2.0.txt")
    row = next(row for row in ledger_chunks(pipeline.ledger(), acme).values() if row["doc_id"] == license_doc)
    encryptor = keyring.encryptor(acme, row["key_version"])
    text = encryptor.decrypt_text(row["chunk_id"], row["text_ciphertext"], row["text_mac"], row["seal_format"])
    vector = encryptor.decrypt_vector(row["chunk_id"], row["embedding_ciphertext"], row["text_mac"],
                                      row["seal_format"])
    sentence, vector_bytes = text[:120], np.asarray(vector, dtype="<f4").tobytes()
    master = pipeline.env["INGEST_MASTER_KEY"]

    clean = leaks.scan([leaks.Installation.of(pipeline)])
    assert not clean.findings, list(map(str, clean.findings))
    assert clean.citations_decrypted == clean.chunks_decrypted and clean.citation_markers >= 2

    (pipeline.home / "dagster" / "logs" / "planted.log").write_text(f"step failed on chunk: {sentence}\n")
    (pipeline.home / "dagster" / "logs" / "planted-citation.log").write_text(f"chunk 3 of escrow.md: {heading}\n")
    (pipeline.home / "cyborgdb" / "planted.bin").write_bytes(b"\x00" * 37 + vector_bytes[:64] + b"\x01")
    # One word of the chunk text, as a term dictionary kept in clear would hold it (the full-text field).
    word = next(w for w in re.findall(rf"[A-Za-z]{{{leaks.TERM_MIN_CHARS},}}", text))
    (pipeline.home / "cyborgdb" / "planted-terms.bin").write_bytes(b"\x07\x00" + word.lower().encode() + b"\x00")
    (pipeline.home / "planted-master.txt").write_text(f"INGEST_MASTER_KEY={master}\n")
    with psycopg.connect(pipeline.ledger().dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.planted (note text, payload bytea, doc jsonb)")
        conn.execute(  # a large repetitive value: Postgres compresses it on disk, the query sees it whole
            "INSERT INTO public.planted VALUES (%s, %s, %s)",
            ("x" * 9000 + f"index key {keys.index_key.hex()}" + "y" * 9000, b"\x02" + keys.data_key + b"\x03",
             json.dumps({"error": f"could not embed \"{sentence}\"\n", "vector": vector[:8].tolist(),
                         "section": f"Escrow > {heading}"})))
    report = leaks.scan([leaks.Installation.of(pipeline)],
                        texts={"planted exception": f"ValueError: bad chunk {text[200:300]!r}"})

    found = {(f.kind, Path(f.where).name if f.where.startswith("/") else f.where) for f in report.findings}
    expected = {("chunk-text", "planted.log"), ("vector", "planted.bin"), ("key", "planted-master.txt"),
                ("index-term", "planted-terms.bin"),
                ("key", f"{leaks.label(pipeline.home)} table public.planted.note"),
                ("key", f"{leaks.label(pipeline.home)} table public.planted.payload"),
                ("chunk-text", f"{leaks.label(pipeline.home)} table public.planted.doc"),
                ("vector", f"{leaks.label(pipeline.home)} table public.planted.doc"),
                ("chunk-text", "exception planted exception"), ("citation", "planted-citation.log"),
                ("citation", f"{leaks.label(pipeline.home)} table public.planted.doc")}
    assert expected <= found, sorted(found)
    secrets = [sentence, heading, master, keys.index_key.hex(), keys.data_key.hex(),
               base64.b64encode(keys.data_key).decode()]
    assert not [f for f in report.findings for s in secrets if s[:16] in str(f)]
    scenario.leaks = 0
    scenario.details = {**report.details(), "planted": len(expected), "planted_found": len(expected & found)}


def test_no_chunk_text_vector_or_key_leaks_anywhere(tmp_path, monkeypatch, docs, cyborgdb_service, scenario):
    """Scan every installation of the session, the service's storage and log, and the exception texts."""
    scenario.category = "leak-scan"
    caught: dict[str, str] = {}
    homes = []
    try:
        for backend in ("embedded", "service"):
            pipeline = new_installation(tmp_path / backend, monkeypatch, backend,
                                       cyborgdb_service if backend == "service" else None)
            homes.append(pipeline.home)
            _ingest_with_failures(pipeline, docs, monkeypatch, caught)
        report = leaks.scan([leaks.Installation.of(p) for p in helpers.INSTALLATIONS],
                            extra_roots=[cyborgdb_service["storage"]], texts=caught)
    finally:
        for home in homes:
            stop_embedded_postgres(home)
    scenario.leaks = len(report.findings)
    scenario.details = report.details()
    # The scan saw what it had to: both installations' chunks, vectors and keys, Dagster's failure texts.
    assert not [u for u in report.unreachable if any(u.startswith(leaks.label(h)) for h in homes)]
    assert report.chunks_decrypted > 50 and report.vectors_decrypted > 50 and report.tenants >= 4
    # Every sealed citation was opened but those an isolation scenario tampered with (chunks written before
    # citations, as the legacy installation's, have none), and the section labels were searched.
    tampered = [u for u in report.undecryptable if ": citation of " in u]
    assert report.citations_decrypted == report.citations_sealed - len(tampered) > 50
    assert report.citation_markers >= 2
    assert report.exception_texts >= 6 and report.files_scanned > 1000 and report.rows_scanned > 1000
    # The chunk text is in both backends' indexes as a full-text field: its words were looked for in their files.
    assert report.index_terms > 300 and report.index_files >= 4
    assert {"event_logs", "runs", "chunks", "tenants"} <= {t.rsplit(".", 1)[-1] for t in report.tables}
    assert not report.findings, "leaks:\n" + "\n".join(map(str, report.findings))
