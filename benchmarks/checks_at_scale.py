"""`make bench-checks`: what the two index checks cost on a large tenant, before and after they were bounded.

A tenant of --chunks chunks (default 200,000; 100 per document) is written WITHOUT the model, through the
project's own APIs: documents and chunks (`Ledger.chunks.store`, encrypted texts), synthetic embeddings (random,
normalised 384-d vectors, sealed by the tenant's encryptor, `Ledger.chunks.store_embeddings`) and the embedded CyborgDB
index (`IndexWriter.upsert_embedded`). Then each check's function runs in a fresh process of its own, timed, with
that process's peak resident memory (VmHWM) and how much the check raised it:

- `index_matches_ledger` before: every indexed id from the ledger and every id the index lists, compared,
  under the writer lock. After: the ids a run of 200 new chunks wrote (its sample of 128) looked up by id, and
  the two counts, under the lock in shared mode; and launched on its own (counts only).
- `sample_recall_at_10` before: every indexed vector of the tenant decrypted for exact search, under the writer
  lock. After: a baseline of at most 2,000 vectors plus the run's, 20 queries.

A run that wrote nothing skips both (they return before touching the ledger or the index). The index is trained
(IVF) as `cyborgdb_index` trains it at 50,000 vectors. Vectors are clustered by default (see synthetic_vectors);
`--vectors uniform` gives vectors without neighbour structure, on which a trained index's recall is poor and
both recall checks fail, the bounded one included.

    .venv/bin/python benchmarks/checks_at_scale.py [--chunks 200000] [--vectors clustered|uniform]
        [--home DIR (kept, reused)] [--json-out checks-report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import print_figures, scratch_installation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"
PER_DOC = 100
DIMENSION = 384
RUN_CHUNKS = 200  # the "run" whose writes the new checks verify: its last documents' chunks
TRAIN_AT = 50_000  # IndexConfig.train_at_vectors


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def kept_installation(home: str):
    """INGEST_HOME at `home`, its master key kept beside it, so that a second run reuses what the first built."""
    from ingest_pipeline.core.crypto import generate_master_key

    Path(home).mkdir(parents=True, exist_ok=True)
    key_file = Path(home, "bench-master.key")
    if not key_file.exists():
        key_file.write_text(generate_master_key())
    os.environ.update({"INGEST_HOME": home, "INGEST_MASTER_KEY": key_file.read_text()})
    yield Path(home)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_vectors(rng, first: int, count: int, spread: str) -> np.ndarray:
    """Normalised 384-d vectors. "clustered": 500 topics of 20 subtopics each, every vector a subtopic's plus
    noise (cosine about 0.7 within a subtopic, 0.55 within a topic, 0 across), so that nearest neighbours mean
    something, as with real embeddings; "uniform": independent random directions (no neighbour structure: an
    IVF index probing a few clusters misses most true neighbours, and both recall checks rightly fail)."""
    noise = _unit(rng.standard_normal((count, DIMENSION)))
    if spread == "uniform":
        return noise
    ids = first + np.arange(count)
    topics, subtopics = _centres(500, 1), _centres(500 * 20, 2)
    return _unit(topics[(ids // 400) % 500] + 0.6 * subtopics[(ids // 20) % 10_000] + 0.45 * noise)


_CENTRES: dict = {}


def _centres(count: int, seed: int) -> np.ndarray:
    if (count, seed) not in _CENTRES:
        _CENTRES[(count, seed)] = _unit(np.random.default_rng(seed).standard_normal((count, DIMENSION)))
    return _CENTRES[(count, seed)]


def build(chunks: int, spread: str) -> dict:
    """Write the tenant: documents, encrypted chunks and embeddings, and its embedded index."""
    from ingest_pipeline.core.ids import chunk_id, document_id
    from ingest_pipeline.definitions import build_resources
    from ingest_pipeline.stores.ledger import ChunkWrite, EmbeddingWrite, Upload
    from ingest_pipeline.work.indexing import IndexWriter
    from ingest_pipeline.work.uploads import current_month

    resources = build_resources()
    store, keyring, indexes = resources["ledger"].ledger, resources["keyring"], resources["cyborgdb"].indexes
    month = current_month()
    rng = np.random.default_rng(7)
    started = time.perf_counter()
    with store.tenant_writer(TENANT) as session:
        conn = session.conn
        session.keys = keyring.open_tenant(conn, TENANT)
        encryptor = session.keys.encryptor()

        def write_documents(begin: int, stop: int) -> None:
            for first in range(begin, stop, PER_DOC):
                name = f"doc-{first // PER_DOC:05d}.txt"
                doc = document_id(TENANT, name)
                with conn.transaction():
                    upload_id = store.uploads.record(conn, tenant_id=TENANT, doc_id=doc, doc_name=name,
                                                    content_sha256="0" * 64, size_bytes=1, is_delete=False,
                                                    partition_month=month)
                    store.documents.register(conn, Upload(upload_id, TENANT, doc, name, "0" * 64, False, month),
                                            "0" * 64)
                    rows = []
                    for sequence in range(min(PER_DOC, stop - first)):
                        cid, text = chunk_id(doc, sequence), f"synthetic chunk {sequence} of {name}"
                        rows.append(ChunkWrite(cid, sequence, 8, encryptor.text_mac(text),
                                               encryptor.encrypt_text(cid, text), encryptor.key_version, None))
                    store.chunks.store(conn, store.documents.find(conn, doc), "0" * 64, rows)
                    vectors = synthetic_vectors(rng, first, len(rows), spread)
                    store.chunks.store_embeddings(conn, TENANT, [
                        EmbeddingWrite(encryptor.encrypt_vector(row.chunk_id, vector, row.text_mac), row.chunk_id,
                                       row.text_mac) for row, vector in zip(rows, vectors, strict=True)])

        # Everything but the last RUN_CHUNKS, indexed; then those, indexed by "the run" whose writes are checked.
        write_documents(0, chunks - RUN_CHUNKS)
        IndexWriter(store, indexes, keyring, session, batch_size=512).upsert_embedded(month)
        write_documents(chunks - RUN_CHUNKS, chunks)
        run = IndexWriter(store, indexes, keyring, session, batch_size=512)
        run.upsert_embedded(month)
        count = run.count()
        built = time.perf_counter() - started
        # As `cyborgdb_index` does at its default train_at_vectors: a tenant this large has a trained (IVF) index.
        trained = run.train_if_due(TRAIN_AT, count)
    Path(os.environ["INGEST_HOME"], "run-writes.json").write_text(json.dumps(
        {"upserted": run.upserted.seen, "upserted_ids": run.upserted.ids}))
    return {"chunks": chunks, "vectors": spread, "index_vectors": count, "run_upserted": run.upserted.seen,
            "build_s": round(built, 1), "index_trained": trained,
            "train_s": round(time.perf_counter() - started - built, 1)}


# ---- the checks as they were (copied from the previous defs/checks.py, minus Dagster) -------------------------

def old_index_matches_ledger(store, indexes, keyring, tenant):
    with store.tenant_writer(tenant) as session:
        expected = store.chunks.indexed_ids(session.conn, tenant)
        live, _, _ = store.tenants.generations(session.conn, tenant)
        index = indexes.open(keyring.tenant_keys(tenant), generation=live)
        actual = index.list_ids() if index is not None else set()
    return not (expected - actual) and not (actual - expected), {"ledger_indexed": len(expected),
                                                                 "index_vectors": len(actual)}


def old_sample_recall(store, indexes, keyring, tenant, month):
    with store.tenant_writer(tenant) as session:
        rows = [row for row in store.chunks.in_partition(session.conn, tenant, month) if row.state == "indexed"]
        sample = random.Random(0).sample(rows, min(20, len(rows)))
        live, _, _ = store.tenants.generations(session.conn, tenant)
        index = indexes.open(keyring.tenant_keys(tenant), generation=live)
        keys = keyring.keyset(tenant, session.conn)

        def vector(row):
            return keys.encryptor(row.key_version).decrypt_vector(
                row.chunk_id, row.embedding_ciphertext, row.text_mac, row.seal_format)

        everything = [row for row in store.chunks.with_embeddings(session.conn, tenant)
                      if row.state == "indexed"]
        column = {row.chunk_id: i for i, row in enumerate(everything)}
        exact = np.stack([vector(row) for row in everything])
        queries = exact[[column[row.chunk_id] for row in sample]]
        neighbours = index.query(queries, top_k=10)
    similarity = queries @ exact.T
    recalls = []
    for hits, scores in zip(neighbours, similarity, strict=True):
        kth = np.sort(scores)[-10]
        recalls.append(sum(1 for hit in hits if hit["id"] in column and scores[column[hit["id"]]] >= kth - 1e-5) / 10)
    return float(np.mean(recalls)) >= 0.95, {"recall_at_10": round(float(np.mean(recalls)), 4),
                                             "exact_search_over_vectors": len(everything)}


def measure(name: str) -> dict:
    """Run one check's function in this (fresh) process: seconds, peak RSS, and how much the check raised it."""
    from ingest_pipeline.definitions import build_resources
    from ingest_pipeline.defs.checks import RunWrites, compare_index_with_ledger, sampled_recall
    from ingest_pipeline.work.uploads import current_month

    resources = build_resources()
    store, keyring, indexes = resources["ledger"].ledger, resources["keyring"], resources["cyborgdb"].indexes
    with store.connect() as conn:  # warm: a connection, the tenant's keys (each call below opens the index)
        keyring.keyset(TENANT, conn)
    saved = json.loads(Path(os.environ["INGEST_HOME"], "run-writes.json").read_text())
    writes = RunWrites(saved["upserted"], 0, saved["upserted_ids"], [])
    calls = {
        "opening the embedded index alone (any step pays it)":
            lambda: (True, {"index_vectors": indexes.open(keyring.tenant_keys(TENANT)).count()}),
        "index_matches_ledger, before": lambda: old_index_matches_ledger(store, indexes, keyring, TENANT),
        "index_matches_ledger, after (a run of 200 chunks)":
            lambda: compare_index_with_ledger(store, indexes, keyring, TENANT, writes),
        "index_matches_ledger, after (launched on its own)":
            lambda: compare_index_with_ledger(store, indexes, keyring, TENANT, None),
        "sample_recall_at_10, before": lambda: old_sample_recall(store, indexes, keyring, TENANT, current_month()),
        "sample_recall_at_10, after (a run of 200 chunks)":
            lambda: sampled_recall(store, indexes, keyring, TENANT, writes, seed=0),
    }
    before = _rss_mb("VmRSS:")
    started = time.perf_counter()
    passed, figures = calls[name]()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"check": name, "passed": passed, "seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1),
            "rss_growth_mb": round(peak - before, 1), "figures": figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--vectors", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--json-out", default=str(ROOT / "checks-report.json"))
    parser.add_argument("--home", help="keep the installation in this INGEST_HOME (built once, reused after)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one check in a fresh process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    names = ["opening the embedded index alone (any step pays it)",
             "index_matches_ledger, before", "index_matches_ledger, after (a run of 200 chunks)",
             "index_matches_ledger, after (launched on its own)", "sample_recall_at_10, before",
             "sample_recall_at_10, after (a run of 200 chunks)"]
    with kept_installation(args.home) if args.home else scratch_installation("ingest-bench-checks-") as home:
        marker = Path(home, "built.json")
        if marker.exists():
            built = json.loads(marker.read_text())
        else:
            print(f"building a tenant of {args.chunks:,} chunks (no model) ...", flush=True)
            built = build(args.chunks, args.vectors)
            marker.write_text(json.dumps(built))
        print_figures(built)
        results = []
        for name in names:
            done = subprocess.run([sys.executable, __file__, "--measure", name], capture_output=True, text=True,
                                  env=os.environ.copy())
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            result = results[-1]
            print(f"{name:<55} {result['seconds']:>8.3f} s  peak RSS {result['peak_rss_mb']:>7.1f} MB "
                  f"(+{result['rss_growth_mb']:.1f})  passed={result['passed']}", flush=True)
    Path(args.json_out).write_text(json.dumps({"build": built, "checks": results}, indent=2))
    return 0 if all(result["passed"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
