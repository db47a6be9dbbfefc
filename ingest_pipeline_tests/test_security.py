"""Tenant isolation and encryption at rest: no plaintext text or vectors in Postgres, CyborgDB or Dagster."""

import re
from pathlib import Path

import numpy as np
import psycopg
import pytest
from dagster import DagsterEventType
from psycopg import sql

from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.core.ids import index_name
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.stores.tenant_index import IndexKeyMismatch, TenantIndex
from ingest_pipeline_tests.helpers import ledger_chunks, materialize_partition, step_events

SAFE_SNIPPET = re.compile(r"[A-Za-z0-9 ,.;:()-]+")


def test_a_tenant_never_sees_another_tenants_documents(pipeline, docs):
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    pipeline.upload(acme, docs / "shared-mime-info-spec.pdf")
    pipeline.upload(globex, docs / "apache-license-2.0.txt")
    pipeline.ingest()

    # globex asks about acme's document: only globex's own chunks come back.
    hits = pipeline.search(globex, "What is the default priority of a magic rule?", 10)
    assert hits and {hit["source"] for hit in hits} == {"apache-license-2.0.txt"}
    assert {hit["source"] for hit in pipeline.search(acme, "Apache License grant of patent", 10)} == {
        "shared-mime-info-spec.pdf"}

    resources = build_resources()
    keyring, indexes = resources["keyring"], resources["cyborgdb"].indexes
    # The search path opens an index by tenant; even a hand-built request for acme's index with globex's
    # index key is refused by CyborgDB itself.
    globex_keys = keyring.tenant_keys(globex)
    forged = type(globex_keys)(tenant_id=acme, key_version=1, data_key=globex_keys.data_key,
                               mac_key=globex_keys.mac_key, index_key=globex_keys.index_key)
    assert index_name(forged.tenant_id) == index_name(acme)
    with pytest.raises(IndexKeyMismatch):
        indexes.open(forged)

    # An acme ciphertext does not decrypt as globex's, nor when moved to another acme row.
    rows = list(ledger_chunks(pipeline.ledger(), acme).values())
    with pytest.raises(DecryptionError):
        keyring.encryptor(globex).decrypt_text(rows[0]["chunk_id"], rows[0]["text_ciphertext"], rows[0]["text_mac"])
    with pytest.raises(DecryptionError):
        keyring.encryptor(acme).decrypt_text(rows[1]["chunk_id"], rows[0]["text_ciphertext"], rows[1]["text_mac"])
    assert keyring.encryptor(acme).decrypt_text(rows[0]["chunk_id"], rows[0]["text_ciphertext"], rows[0]["text_mac"])


def _files_containing(root: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {needle: [] for needle in needles}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    found[needle].append(str(path.relative_to(root)))
    return {needle: paths for needle, paths in found.items() if paths}


def _rows_containing(dsn: str, needles: list[str]) -> dict[str, set[str]]:
    """Every row of every table (ours and Dagster's), as text: compressed (TOASTed) values are seen too.
    bytea columns read as hex, so needles are searched in clear and hex-encoded."""
    forms = {needle: (needle, needle.encode().hex()) for needle in needles}
    found: dict[str, set[str]] = {}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'ingest') AND table_type = 'BASE TABLE'"
        ).fetchall()
        assert ("public", "event_logs") in tables and ("ingest", "chunks") in tables
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
            for (row,) in conn.execute(query):
                for needle, (clear, hexed) in forms.items():
                    if clear in row or hexed in row:
                        found.setdefault(needle, set()).add(f"{schema}.{table}")
    return found


class _LeakyHandle:
    """Fault injector: a CyborgDB handle whose first upsert fails with an error that quotes the request,
    as a service's validation error can."""

    failed = False

    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def upsert(self, items, **kwargs):
        if not _LeakyHandle.failed:
            _LeakyHandle.failed = True
            raise ValueError(f"422 unprocessable request: vector={items[0]['vector'].tolist()}")
        return self._handle.upsert(items, **kwargs)


def test_no_plaintext_chunk_or_vector_reaches_postgres_cyborgdb_or_dagster(pipeline, docs, monkeypatch, request):
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    _LeakyHandle.failed = False
    real_init = TenantIndex.__init__
    monkeypatch.setattr(TenantIndex, "__init__",
                        lambda self, tenant, handle, *a, **k: real_init(self, tenant, _LeakyHandle(handle), *a, **k))
    result = materialize_partition(acme)
    assert result.success and _LeakyHandle.failed  # the injected failure happened, and the step retried
    assert step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, "cyborgdb_index")

    ledger = pipeline.ledger()
    keyring = build_resources()["keyring"]
    encryptor = keyring.encryptor(acme)
    rows = sorted(ledger_chunks(ledger, acme).values(), key=lambda r: (r["doc_id"], r["sequence"]))
    texts = [encryptor.decrypt_text(r["chunk_id"], r["text_ciphertext"], r["text_mac"]) for r in rows]
    vectors = [encryptor.decrypt_vector(r["chunk_id"], r["embedding_ciphertext"], r["text_mac"]) for r in rows]
    # 40-character runs of chunk text that any store would keep verbatim (no characters JSON escapes).
    snippets = {t[i:i + 40] for t in texts for i in range(0, max(1, len(t) - 40), 97)}
    text_needles = sorted(s for s in snippets if SAFE_SNIPPET.fullmatch(s) and len(set(s)) > 15)
    vector_bytes = [np.asarray(v, dtype="<f4")[:8].tobytes() for v in vectors[:: max(1, len(vectors) // 20)]]
    vector_text = [str(v.tolist()[0]) for v in vectors]  # how the injected error spelled a vector
    assert len(text_needles) > 50 and len(vector_bytes) >= 10

    # Postgres: every row of the ledger and of Dagster's storage (runs, event logs, asset metadata).
    leaks = _rows_containing(ledger.dsn, text_needles + vector_text + [b.hex() for b in vector_bytes])
    assert not leaks, f"plaintext in Postgres tables: {sorted(set().union(*leaks.values()))}"
    assert _rows_containing(ledger.dsn, ["apache-license-2.0.txt"])  # the scan sees what is stored in clear

    # Files: CyborgDB's storage (and the service's log), Postgres's data directory, Dagster's home.
    cyborgdb_files = (request.getfixturevalue("cyborgdb_service")["storage"] if pipeline.backend == "service"
                      else pipeline.home / "cyborgdb")
    with ledger.connect() as conn:
        conn.execute("CHECKPOINT")
    needles = [n.encode() for n in text_needles] + vector_bytes + [n.encode() for n in vector_text]
    for name, root in {"cyborgdb": cyborgdb_files, "postgres": pipeline.home / "pgdata",
                       "dagster": pipeline.home / "dagster"}.items():
        assert any(p.is_file() and p.stat().st_size for p in root.rglob("*")), f"{name} store is empty"
        leaks = _files_containing(root, needles)
        assert not leaks, f"plaintext in {name} files: {sorted({p for paths in leaks.values() for p in paths})}"
