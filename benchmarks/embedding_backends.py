"""The int8 ONNX backend against the bare PyTorch model, side by side in one process.

Throughput: the chunk texts of the bundled sample corpus (extracted and chunked as the pipeline does) are
embedded by `SentenceTransformer.encode` and by the int8 ONNX export, same texts, same batch size, alternately
three times each (the median counts), after a warm-up of both. Quality: every passage of the bundled SQuAD 2.0
dev sample is chunked and embedded by each backend, and each question is answered by exact cosine search over
its backend's vectors: answer in the top 5 and at rank 1. Fidelity: the cosine between each chunk's int8 and PyTorch
vectors (mean and minimum). Printed as a table, and as JSON with --json.

    .venv/bin/python benchmarks/embedding_backends.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from retrieval_quality import _answered, load_qa
from scratch import print_figures

CORPUS = Path(__file__).resolve().parent.parent / "ingest_pipeline" / "sample_corpus"


def corpus_chunks(chunker) -> list[str]:
    from ingest_pipeline.core.extraction import extract_text

    texts = []
    for path in sorted(CORPUS.glob("*/*.*")):
        if path.name != "SOURCES.md":
            extracted = extract_text(path.name, path.read_bytes())
            texts += [chunk.text for chunk in chunker.split(extracted.text, extracted.format)]
    return texts


def rate(embedder, texts: list[str]) -> float:
    started = time.perf_counter()
    embedder.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def answer_rates(embedder, chunker, contexts: dict[str, str], questions: list[dict]) -> tuple[float, float]:
    chunks = [chunk.text for text in contexts.values() for chunk in chunker.split(text, "text")]
    matrix = embedder.embed(chunks)
    order = np.argsort(-(embedder.embed([q["question"] for q in questions]) @ matrix.T), axis=1)[:, :5]
    top5 = [_answered([chunks[i] for i in row], q["answers"]) for q, row in zip(questions, order, strict=True)]
    top1 = [_answered([chunks[row[0]]], q["answers"]) for q, row in zip(questions, order, strict=True)]
    return float(np.mean(top5)), float(np.mean(top1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ingest_pipeline.core.chunking import Chunker
    from ingest_pipeline.core.embedding import DEFAULT_BATCH_SIZE, Embedder, OnnxInt8Embedder, bundled_model_path

    model = bundled_model_path()
    chunker = Chunker(model / "tokenizer.json")
    texts = corpus_chunks(chunker)
    with tempfile.TemporaryDirectory(prefix="ingest-onnx-") as cache:
        started = time.perf_counter()
        int8 = OnnxInt8Embedder(str(model), DEFAULT_BATCH_SIZE, cache_dir=cache)
        export_seconds = time.perf_counter() - started
        torch_model = Embedder(str(model), DEFAULT_BATCH_SIZE)
        for embedder in (torch_model, int8):
            embedder.embed(texts[:64])  # warm-up
        cosines = (int8.embed(texts) * torch_model.embed(texts)).sum(axis=1)
        torch_rates, int8_rates = [], []
        for _ in range(3):
            torch_rates.append(rate(torch_model, texts))
            int8_rates.append(rate(int8, texts))
        contexts, questions = load_qa()
        torch_top5, torch_top1 = answer_rates(torch_model, chunker, contexts, questions)
        int8_top5, int8_top1 = answer_rates(int8, chunker, contexts, questions)
    torch_rate, int8_rate = statistics.median(torch_rates), statistics.median(int8_rates)
    import torch

    figures = {
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, device cpu",
        "chunks (sample corpus)": len(texts),
        "batch size": DEFAULT_BATCH_SIZE,
        "PyTorch encode, chunks/s (median of 3)": round(torch_rate, 1),
        "int8 ONNX, chunks/s (median of 3)": round(int8_rate, 1),
        "int8 ONNX / PyTorch": round(int8_rate / torch_rate, 2),
        "export + quantization, s (once per model)": round(export_seconds, 1),
        "cosine int8 to PyTorch, mean": round(float(cosines.mean()), 4),
        "cosine int8 to PyTorch, min": round(float(cosines.min()), 4),
        "QA questions": len(questions),
        "answer in top 5, PyTorch": round(torch_top5, 3),
        "answer in top 5, int8 ONNX": round(int8_top5, 3),
        "answer at rank 1, PyTorch": round(torch_top1, 3),
        "answer at rank 1, int8 ONNX": round(int8_top1, 3),
    }
    print(json.dumps(figures)) if args.json else print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
