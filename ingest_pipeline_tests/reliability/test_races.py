"""Races between processes: the same document uploaded twice at once, and v1 and v2 of one document racing
(upload and ingest in two processes at the same moment). The end state is exactly one chunk set, the newest.

The racers are real `ingest_pipeline.cli` processes, imported and connected before a barrier (a file) that
releases them together, so the racing part starts within milliseconds.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest_pipeline import cli
from ingest_pipeline.core.ids import document_id
from ingest_pipeline.definitions import build_resources
from ingest_pipeline_tests.helpers import CORPUS
from ingest_pipeline_tests.reliability.invariant import assert_invariant, search_fingerprint

FILES = ("acme/apache-license-2.0.txt", "globex/pip-dependency-resolution.md")

_RACER = """
import os, sys, time
from pathlib import Path
from ingest_pipeline import cli
from ingest_pipeline.runtime.instance import prepare_environment
prepare_environment()
barrier = Path(sys.argv[1])
Path(f"{barrier}.ready-{os.getpid()}").touch()
while not barrier.exists():
    time.sleep(0.002)
sys.exit(max(cli.main(args.split("\\x1f")) for args in sys.argv[2:]))
"""


def _race(pipeline, tmp_path: Path, *commands: list[list[str]], timeout: int = 600) -> list[str]:
    """Run one racer process per entry of `commands` (each a list of CLI argument lists), all released at once
    after every one has imported everything and joined Postgres."""
    barrier = tmp_path / f"barrier-{time.monotonic_ns()}"
    env = {**os.environ, **pipeline.env}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(barrier), *("\x1f".join(a) for a in argv)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for argv in commands]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob(f"{barrier.name}.ready-*"))) < len(racers):
        assert time.monotonic() < deadline and all(r.poll() is None for r in racers), "a racer did not get ready"
        time.sleep(0.05)
    barrier.touch()
    outputs = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=timeout)
        assert racer.returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    return outputs


def _live_chunks(pipeline, tenant: str) -> list[dict]:
    with pipeline.ledger().connect() as conn:
        return conn.execute(
            "SELECT c.chunk_id::text AS chunk_id, c.sequence, c.state, c.text_ciphertext, c.text_mac, c.key_version,"
            " c.seal_format FROM ingest.chunks c WHERE c.tenant_id = %s AND c.state <> 'stale' ORDER BY c.sequence",
            (tenant,),
        ).fetchall()


@pytest.mark.parametrize("pipeline", ["embedded"], indirect=True)  # the upload path is the same on both backends
def test_the_same_document_uploaded_twice_at_once_is_one_document(pipeline, tmp_path, scenario,
                                                                   clean_references):
    scenario.category = "race"
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in FILES:
        (folder / Path(name).name).write_bytes((CORPUS / name).read_bytes())
    reference = clean_references.fingerprint(pipeline, folder.iterdir())
    tenant = pipeline.tenant("acme")
    upload = ["upload", "--tenant", tenant, "--json", str(folder)]
    outputs = _race(pipeline, tmp_path, [upload], [upload])
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    scenario.details = {"backend": pipeline.backend, "uploads": results}
    names = {Path(name).name for name in FILES}
    # Each process acknowledged every document (uploaded, or found it already current).
    for result in results:
        assert set(result["uploaded"]) | set(result["unchanged"]) == names

    pipeline.ingest(tenant)
    scenario.add_invariant(assert_invariant(tenant, names))
    status = pipeline.status(tenant)
    assert status["documents"] == len(names)
    assert status["chunks"] == status["indexed"] == status["index_vectors"]
    assert pipeline.ledger().tenants.status(tenant).embeddings_computed == status["chunks"]
    assert search_fingerprint(pipeline, tenant) == reference
    scenario.survived()


def _version(words: str, paragraphs: int) -> str:
    body = "\n\n".join(
        f"Paragraph {n} of the {words} edition. " + " ".join(f"The {words} procedure step {n}.{i} keeps records "
                                                             f"of item {i} in ledger {n}." for i in range(30))
        for n in range(paragraphs))
    return f"# Runbook ({words} edition)\n\n{body}\n"


def test_v1_and_v2_of_one_document_racing_end_as_exactly_one_chunk_set_the_newest(pipeline, tmp_path, scenario):
    scenario.category = "race"
    tenant = pipeline.tenant("acme")
    versions = {"v1": _version("amber", 4), "v2": _version("cobalt", 1)}
    files = {}
    for label, text in versions.items():
        (tmp_path / label).mkdir()
        files[label] = tmp_path / label / "runbook.md"
        files[label].write_text(text)
    digests = {hashlib.sha256(text.encode()).hexdigest(): label for label, text in versions.items()}

    ingest = ["ingest", "--tenant", tenant, "--json"]
    outputs = _race(pipeline, tmp_path, [["upload", "--tenant", tenant, "--json", str(files["v1"])], ingest],
                    [["upload", "--tenant", tenant, "--json", str(files["v2"])], ingest])
    assert all(out.strip() for out in outputs)
    pipeline.ingest(tenant)  # whatever the racers left pending (a run that found the tenant busy) is done now

    ledger = pipeline.ledger()
    with ledger.connect() as conn:
        latest = ledger.uploads.latest(conn, document_id(tenant, "runbook.md"))
        document = ledger.documents.find(conn, document_id(tenant, "runbook.md"))
    newest = digests[latest.content_sha256]
    landed = hashlib.sha256((pipeline.home / "landing" / tenant / "runbook.md").read_bytes()).hexdigest()
    scenario.details = {"backend": pipeline.backend, "newest_upload": newest, "landing_zone": digests.get(landed),
                        "indexed": digests.get(document.content_sha256)}
    # The newest upload is what the landing zone holds and what the ledger indexed.
    assert landed == latest.content_sha256 == document.content_sha256

    # Exactly one chunk set: that version's, whole, in sequence, each chunk once; nothing of the other one.
    other = "cobalt" if newest == "v1" else "amber"
    mine = "amber" if newest == "v1" else "cobalt"
    keyring = build_resources()["keyring"]
    chunks = _live_chunks(pipeline, tenant)
    texts = [keyring.encryptor(tenant, row["key_version"]).decrypt_text(
        row["chunk_id"], row["text_ciphertext"], row["text_mac"], row["seal_format"]) for row in chunks]
    assert [row["sequence"] for row in chunks] == list(range(len(chunks)))
    assert all(mine in text and other not in text for text in texts)
    if newest == "v1":
        assert len(chunks) > 1
    found = assert_invariant(tenant, {"runbook.md"})
    scenario.add_invariant(found)
    hits = pipeline.search(tenant, f"{other} procedure step", len(chunks))
    assert hits and all(mine in hit["text"] and other not in hit["text"] for hit in hits)
    assert len({hit["chunk_sequence"] for hit in hits}) == len(hits) == len(chunks)
    scenario.survived()


def test_searches_of_an_embedded_index_while_another_process_ingests_into_it_are_all_correct(
    embedded_pipeline, docs
):
    """Search reads an embedded index without the tenant's writer lock (an ingest holds it for the whole run).
    cyborgdb-core opens an index's store to one process at a time, so a search waits while the ingest's upserts
    hold it (and an upsert while a search does). Searches in a loop while an `ingest` process upserts a few hundred
    vectors into the same index: every answer is complete and right, none fails, and the new documents are found
    once the ingest has finished."""
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    probe = "What does the Apache License say about patents?"
    def vector_search() -> list[tuple[str, float]]:  # cosine scores are absolute; fused rank scores move
        return [(hit["chunk_id"], hit["score"]) for hit in cli.search(acme, [probe], 5, mode="vector")[0]]

    expected = vector_search()
    assert len(expected) == 5

    others = [CORPUS / name for name in ("acme/systemd-uids-gids.md", "acme/shared-mime-info-spec.pdf",
                                          "globex/libtasn1-manual.pdf", "globex/xz-file-format.txt")]
    pipeline.upload(acme, *others)
    ingest = subprocess.Popen([sys.executable, "-m", "ingest_pipeline.cli", "ingest", "--tenant", acme, "--json"],
                              env={**os.environ, **pipeline.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    searched_while_indexing = 0
    while ingest.poll() is None:
        time.sleep(0.2)  # a user's searches, not a busy loop: the index is open to one process at a time
        answer = vector_search()
        # The new documents' chunks may rank in between, never replace a better one or drop out of order.
        assert [chunk for chunk, _ in answer if chunk in dict(expected)] == [
            chunk for chunk, score in expected if score >= answer[-1][1]], answer
        assert len(answer) == 5
        with pipeline.ledger().connect() as conn:
            indexed = conn.execute("SELECT count(*) AS n FROM ingest.chunks WHERE tenant_id = %s AND state = "
                                   "'indexed'", (acme,)).fetchone()["n"]
        searched_while_indexing += indexed > len(expected) and ingest.poll() is None
    _, stderr = ingest.communicate(timeout=600)
    assert ingest.returncode == 0, stderr[-3000:]
    assert searched_while_indexing >= 3  # the loop did overlap the writes
    status = pipeline.status(acme)
    assert status["documents"] == 5 and status["chunks"] == status["indexed"] == status["index_vectors"]
    assert pipeline.search(acme, "How does xz verify the integrity of a stream?", 1)[0]["source"] == (
        "xz-file-format.txt")
