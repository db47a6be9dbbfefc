"""Retrieval quality on a public QA set: the encrypted CyborgDB index against exact cosine search.

Every passage of the bundled SQuAD 2.0 dev sample (benchmarks/data) is uploaded as a document and
ingested through the real pipeline (Dagster, Postgres, CyborgDB, the bundled model) into a scratch
INGEST_HOME. Then, for every question, the same query vector is answered twice, side by side:
  - by `ingest-pipeline search` (the tenant's encrypted CyborgDB index), and
  - by brute-force cosine search over the same vectors, decrypted from the Postgres cold copy.
Printed: recall@k of the encrypted index against exact search, and answer-in-top-k / top-1 for both (the
vector leg).

Then the search modes side by side, on two QA sets: the SQuAD sample and benchmarks/data/sample_corpus_qa.jsonl
(questions about the bundled sample corpus, ingested as a second tenant): answer-in-top-k for vector, keyword
and hybrid at several alphas (alpha weights the vector leg; 0 = keyword only, 1 = vector only), and the median
per-query latency of each mode (one query per call: embedding, the encrypted index, the ledger and decryption).

    .venv/bin/python benchmarks/retrieval_quality.py [--top-k 5] [--limit N] [--alphas 0.2,0.35,0.5,0.65,0.8]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.scratch import print_figures, scratch_installation
except ImportError:  # run as a script
    from scratch import print_figures, scratch_installation

QA_SET = Path(__file__).parent / "data" / "qa_set.jsonl"
SAMPLE_QA_SET = Path(__file__).parent / "data" / "sample_corpus_qa.jsonl"
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "ingest_pipeline" / "sample_corpus"
TENANT = "squad"
SAMPLE_TENANT = "samplecorpus"
ALPHAS = (0.2, 0.35, 0.5, 0.65, 0.8)


def load_qa(path: Path = QA_SET, limit: int | None = None) -> tuple[dict[str, str], list[dict]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    questions = records[:limit] if limit else records
    contexts = {r["context_id"]: r["context"] for r in records if "context_id" in r}
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
    encrypted = cli.search(TENANT, queries, top_k, mode="vector")
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


def _searcher(tenant: str, resources):
    """search_tenant for one query on the tenant's index, opened once (what a search service holds open)."""
    from ingest_pipeline.work.indexing import open_live_index
    from ingest_pipeline.work.search import search_tenant

    keyring, model, ledger = resources["keyring"], resources["embedding_model"], resources["ledger"].ledger
    keys = keyring.keyset(tenant)
    index = open_live_index(ledger, resources["cyborgdb"].indexes, keys.keys())

    def search(query: str, top_k: int, mode: str, alpha: float | None) -> list:
        answers = search_tenant(tenant_id=tenant, queries=[query], top_k=top_k, embedder=model.embedder,
                                index=index, ledger=ledger, encryptor_for=keys.encryptor, mode=mode, alpha=alpha,
                                model_ids=(model.model_id, model.legacy_model_id))
        if answers.warning:
            raise RuntimeError(answers.warning)
        return answers.hits[0]

    return search


def compare_modes(top_k: int = 5, alphas=ALPHAS, limit: int | None = None) -> dict:
    """Answer-in-top-k of each search mode on both QA sets, and each mode's median per-query latency (ms).
    Ingests the sample corpus as a second tenant (the SQuAD tenant comes from `evaluate`)."""
    from ingest_pipeline import cli
    from ingest_pipeline.definitions import build_resources

    cli.upload(SAMPLE_TENANT, [str(SAMPLE_CORPUS / "acme"), str(SAMPLE_CORPUS / "globex")])
    summary = cli.ingest(SAMPLE_TENANT, show_progress=False)
    if summary["failed_runs"]:
        raise RuntimeError(f"ingest failed: {summary['runs']}")
    resources = build_resources()
    resources["embedding_model"].embedder.embed(["warm up"])
    sets = {"squad": (TENANT, load_qa(QA_SET, limit)[1]),
            "sample_corpus": (SAMPLE_TENANT, load_qa(SAMPLE_QA_SET, limit)[1])}
    modes = [("vector", "vector", None), ("keyword", "keyword", None),
             *((f"hybrid_a{alpha:g}", "hybrid", alpha) for alpha in alphas)]
    figures: dict = {}
    latencies: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    for set_name, (tenant, questions) in sets.items():
        figures[f"{set_name}_questions"] = len(questions)
        search = _searcher(tenant, resources)
        for label, mode, alpha in modes:
            found = []
            for question in questions:
                started = time.perf_counter()
                hits = search(question["question"], top_k, mode, alpha)
                latencies[label].append(time.perf_counter() - started)
                found.append(_answered([hit.text for hit in hits], question["answers"]))
            figures[f"{set_name}_answer_in_top_{top_k}_{label}"] = round(float(np.mean(found)), 4)
    for label, seconds in latencies.items():
        figures[f"median_query_ms_{label}"] = round(1000 * float(np.median(seconds)), 1)
    return figures


def print_modes_table(figures: dict, top_k: int) -> None:
    """The modes side by side: answer-in-top-k on each set, median latency."""
    labels = [k.removeprefix("median_query_ms_") for k in figures if k.startswith("median_query_ms_")]
    print(f"\n{'mode':<14}{'squad@' + str(top_k):>12}{'sample@' + str(top_k):>12}{'ms/query':>10}")
    for label in labels:
        print(f"{label:<14}{figures[f'squad_answer_in_top_{top_k}_{label}']:>12.3f}"
              f"{figures[f'sample_corpus_answer_in_top_{top_k}_{label}']:>12.3f}"
              f"{figures[f'median_query_ms_{label}']:>10.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS),
                        help="the hybrid alphas to compare, comma-separated")
    args = parser.parse_args()
    with scratch_installation("ingest-recall-"):
        print_figures(evaluate(args.top_k, args.limit))
        modes = compare_modes(args.top_k, [float(a) for a in args.alphas.split(",")], args.limit)
        print_figures(modes)
        print_modes_table(modes, args.top_k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
