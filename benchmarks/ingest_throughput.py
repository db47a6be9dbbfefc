"""Ingest throughput against the bare embedding model, measured side by side in one process.

The bundled sample corpus (both tenants' documents, repeated --copies times under distinct names) is ingested
through the whole pipeline: Dagster runs, extraction, chunking, AES-GCM, Postgres, CyborgDB. The very same chunk
texts are then embedded by the bare model (`SentenceTransformer.encode`, batch 32), before and after the pipeline
run to average out drift. The model is loaded before either is timed, so both figures are steady state.

    .venv/bin/python benchmarks/ingest_throughput.py [--copies 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from scratch import print_figures, scratch_installation

CORPUS = Path(__file__).resolve().parent.parent / "ingest_pipeline" / "sample_corpus"
TENANT = "bench"


def bare_model_rate(embedder, texts: list[str]) -> float:
    started = time.perf_counter()
    embedder.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="times the sample corpus is uploaded")
    args = parser.parse_args()

    with scratch_installation("ingest-bench-") as home:
        from ingest_pipeline import cli
        from ingest_pipeline.definitions import build_resources

        resources = build_resources()
        embedder = resources["embedding_model"].embedder  # loaded once, before anything is timed
        embedder.embed(["warm-up"])
        staging = Path(home) / "staging"
        for copy in range(args.copies):
            for source in sorted(CORPUS.glob("*/*.*")):
                if source.name != "SOURCES.md":
                    target = staging / f"copy{copy}" / source.parent.name / source.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
        cli.upload(TENANT, [str(staging)])

        started = time.perf_counter()
        summary = cli.ingest(TENANT, show_progress=False)
        pipeline_seconds = time.perf_counter() - started
        if summary["failed_runs"]:
            print(f"ingest failed: {summary['runs']}", file=sys.stderr)
            return 1
        chunks = summary["totals"]["chunks_embedded"]

        ledger, encryptor = resources["ledger"].ledger, resources["keyring"].encryptor(TENANT)
        with ledger.connect() as conn:
            rows = ledger.tenant_chunks_with_embeddings(conn, TENANT)
        texts = [encryptor.decrypt_text(r["chunk_id"], r["text_ciphertext"], r["text_mac"]) for r in rows]
        bare = bare_model_rate(embedder, texts)
        pipeline_rate = chunks / pipeline_seconds
        bare = (bare + bare_model_rate(embedder, texts)) / 2

    figures = {
        "documents": len({r["doc_id"] for r in rows}),
        "chunks": chunks,
        "pipeline_seconds": round(pipeline_seconds, 2),
        "pipeline_chunks_per_s (end to end)": round(pipeline_rate, 1),
        "embedding_step_chunks_per_s": summary["embedding_chunks_per_second"],
        "bare_model_chunks_per_s": round(bare, 1),
        "pipeline / bare model": round(pipeline_rate / bare, 3),
    }
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
