"""Tenant isolation and encryption at rest: no plaintext text or vectors in Postgres, CyborgDB or Dagster."""

from pathlib import Path

import numpy as np
import pytest

from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.core.ids import index_name
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.vector_index import IndexKeyMismatch
from tests.integration.helpers import ledger_chunks


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

    resources = build_resources(for_dagster=False)
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
        keyring.encryptor(globex).decrypt_text(rows[0]["chunk_id"], rows[0]["text_ciphertext"])
    with pytest.raises(DecryptionError):
        keyring.encryptor(acme).decrypt_text(rows[1]["chunk_id"], rows[0]["text_ciphertext"])
    assert keyring.encryptor(acme).decrypt_text(rows[0]["chunk_id"], rows[0]["text_ciphertext"])


def _files_containing(root: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {needle: [] for needle in needles}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    found[needle].append(str(path.relative_to(root)))
    return {needle: paths for needle, paths in found.items() if paths}


def test_no_plaintext_chunk_or_vector_reaches_postgres_cyborgdb_or_dagster(embedded_pipeline, docs):
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs)
    embedded_pipeline.ingest()
    ledger = embedded_pipeline.ledger()
    with ledger.connect() as conn:
        conn.execute("CHECKPOINT")  # flush shared buffers so the data files hold every row

    keyring = build_resources(for_dagster=False)["keyring"]
    encryptor = keyring.encryptor(acme)
    rows = sorted(ledger_chunks(ledger, acme).values(), key=lambda r: (r["doc_id"], r["sequence"]))
    texts = [encryptor.decrypt_text(r["chunk_id"], r["text_ciphertext"]) for r in rows]
    vectors = [encryptor.decrypt_vector(r["chunk_id"], r["embedding_ciphertext"]) for r in rows]
    # 48-character runs of chunk text (skipping short or repetitive chunks), and raw float32 vector bytes.
    text_needles = sorted({t[len(t) // 2:len(t) // 2 + 48].encode() for t in texts if len(set(t)) > 20})
    vector_needles = [np.asarray(v, dtype="<f4")[:8].tobytes() for v in vectors[:: max(1, len(vectors) // 20)]]
    assert len(text_needles) > 20 and len(vector_needles) >= 10

    home = embedded_pipeline.home
    stores = {"postgres": home / "pgdata", "cyborgdb": home / "cyborgdb", "dagster": home / "dagster"}
    for name, root in stores.items():
        assert any(p.is_file() and p.stat().st_size for p in root.rglob("*")), f"{name} store is empty"
        leaks = _files_containing(root, text_needles + vector_needles)
        assert not leaks, f"plaintext found in {name}: {sorted({p for paths in leaks.values() for p in paths})}"

    # The scan can see what is stored in clear on purpose: document names are metadata in the ledger.
    assert _files_containing(home / "pgdata", [b"shared-mime-info-spec.pdf"])
