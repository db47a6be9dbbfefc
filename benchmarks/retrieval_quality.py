"""Retrieval quality on a public QA set: the encrypted CyborgDB index against exact cosine search.

Every passage of the bundled SQuAD 2.0 dev sample (benchmarks/data) is uploaded as a document and
ingested through the real pipeline (Dagster, Postgres, CyborgDB, the bundled model) into a scratch
INGEST_HOME. Then, for every question, the same query vector is answered twice, side by side:
  - by `ingest-pipeline search` (the tenant's encrypted CyborgDB index), and
  - by brute-force cosine search over the same vectors, decrypted from the Postgres cold copy.
Printed: recall@k of the encrypted index against exact search, and answer-in-top-k / top-1 for both.

    .venv/bin/python benchmarks/retrieval_quality.py [--top-k 5] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    from benchmarks.scratch import print_figures, scratch_installation
except ImportError:  # run as a script
    from scratch import print_figures, scratch_installation

QA_SET = Path(__file__).parent / "data" / "qa_set.jsonl"
TENANT = "squad"


def load_qa(path: Path = QA_SET, limit: int | None = None) -> tuple[dict[str, str], list[dict]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    questions = records[:limit] if limit else records
    contexts = {r["context_id"]: r["context"] for r in records}
    return contexts, questions


def _answered(texts: list[str], answers: list[str]) -> bool:
    return any(answer.lower() in text.lower() for text in texts for answer in answers)


def evaluate(top_k: int = 5, limit: int | None = None) -> dict:
    """Run the comparison in the current INGEST_HOME; returns the figures."""
    from ingest_pipeline import cli
    from ingest_pipeline.definitions import build_resources

    contexts, questions = load_qa(limit=limit)
    with tempfile.TemporaryDirectory() as folder:
        for context_id, text in contexts.items():
            name = re.sub(r"[^a-zA-Z0-9_-]+", "_", context_id) + ".txt"
            (Path(folder) / name).write_text(text)
        cli.upload(TENANT, [folder])
    summary = cli.ingest(TENANT, show_progress=False)
    if summary["failed_runs"]:
        raise RuntimeError(f"ingest failed: {summary['runs']}")

    resources = build_resources()
    ledger, encryptor = resources["ledger"].ledger, resources["keyring"].encryptor(TENANT)
    with ledger.connect() as conn:
        rows = ledger.chunks.with_embeddings(conn, TENANT)
    ids = [row.chunk_id for row in rows]
    matrix = np.stack([encryptor.decrypt_vector(r.chunk_id, r.embedding_ciphertext, r.text_mac) for r in rows])
    texts = {r.chunk_id: encryptor.decrypt_text(r.chunk_id, r.text_ciphertext, r.text_mac) for r in rows}

    queries = [q["question"] for q in questions]
    encrypted = cli.search(TENANT, queries, top_k)
    query_vectors = resources["embedding_model"].embedder.embed(queries)
    exact_order = np.argsort(-(query_vectors @ matrix.T), axis=1)[:, :top_k]

    overlap, enc_answer, exact_answer, enc_top1, exact_top1 = [], [], [], [], []
    for question, hits, order in zip(questions, encrypted, exact_order, strict=True):
        exact_ids = [ids[i] for i in order]
        enc_ids = [hit["chunk_id"] for hit in hits]
        overlap.append(len(set(enc_ids) & set(exact_ids)) / len(exact_ids))
        enc_answer.append(_answered([hit["text"] for hit in hits], question["answers"]))
        exact_answer.append(_answered([texts[c] for c in exact_ids], question["answers"]))
        enc_top1.append(_answered([hit["text"] for hit in hits[:1]], question["answers"]))
        exact_top1.append(_answered([texts[c] for c in exact_ids[:1]], question["answers"]))
    return {
        "dataset": "SQuAD 2.0 dev sample (benchmarks/data/qa_set.jsonl)",
        "questions": len(questions),
        "passages": len(contexts),
        "chunks": len(ids),
        "top_k": top_k,
        f"recall_at_{top_k}_vs_exact": round(float(np.mean(overlap)), 4),
        f"answer_in_top_{top_k}_encrypted": round(float(np.mean(enc_answer)), 4),
        f"answer_in_top_{top_k}_exact": round(float(np.mean(exact_answer)), 4),
        "answer_at_1_encrypted": round(float(np.mean(enc_top1)), 4),
        "answer_at_1_exact": round(float(np.mean(exact_top1)), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--limit", type=int, help="only the first N questions")
    args = parser.parse_args()
    with scratch_installation("ingest-recall-"):
        print_figures(evaluate(args.top_k, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
