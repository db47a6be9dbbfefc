"""Retrieval per document format: the same articles, written in each format by real tools, against plain text.

The bundled SQuAD 2.0 dev sample's passages are grouped into one document per article (benchmarks/data: 41
passages of 2 articles, 102 questions) and written in every format of `format_corpus.FORMATS` (pandoc, LibreOffice
headless, Python's email package, and scans rasterised at 200 dpi that the pipeline OCRs). Each format is uploaded
as its own tenant of one scratch installation and ingested by the real pipeline (Dagster, Postgres, CyborgDB, the
bundled model, the sandboxed extraction and OCR); then every question is asked of every tenant with
`ingest-pipeline search` (its default ranking). Printed per format: answer in top k and at rank 1, the difference
to plain text in points, whether it meets its goal (text formats within 2 points of .txt, scans within 5), the
chunks stored, the share of top hits with a citation (page or section), and the ceiling: questions whose answer
is in the stored chunk texts at all.

An answer counts as found in a text regardless of whitespace (a PDF breaks lines, and hyphenates at a line end) and
of typographic quotes and dashes; nothing else is forgiven (an OCR misread accent is a miss).

    .venv/bin/python benchmarks/format_retrieval.py [--top-k 5] [--formats txt,docx,...] [--dump DIR] [--json-out F]

`--dump DIR` writes each format's stored chunks (decrypted from the ledger) to DIR/<format>.txt for inspection.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from format_corpus import FORMATS, SCANS, build_corpus  # noqa: E402
from retrieval_quality import load_qa  # noqa: E402
from scratch import scratch_installation  # noqa: E402

BASELINE = "txt"
GOAL_POINTS = {"text": 2.0, "scan": 5.0}
_FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
                       "\u00ad": None})
_SPACE = re.compile(r"\s+")


def tenant_of(fmt: str) -> str:
    return f"fmt-{fmt}"


def folded(text: str) -> str:
    """Text as answers are matched in it: NFKC, lower case, typographic quotes and dashes plain, no whitespace."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text).lower().translate(_FOLD))


def answered(texts: list[str], answers: list[str]) -> bool:
    haystacks = [folded(text) for text in texts]
    return any(folded(answer) in haystack for answer in answers for haystack in haystacks)


def stored_chunks(tenant: str) -> list[tuple[str, str]]:
    """The tenant's chunks as (document name, text), decrypted from the ledger, in document and chunk order."""
    from ingest_pipeline.definitions import build_resources

    resources = build_resources()
    ledger, keys = resources["ledger"].ledger, resources["keyring"].keyset(tenant)
    with ledger.connect() as conn:
        rows = ledger.chunks.with_embeddings(conn, tenant)
        names = {str(row["doc_id"]): row["doc_name"] for row in conn.execute(
            "SELECT doc_id, doc_name FROM ingest.documents WHERE tenant_id = %s", (tenant,)).fetchall()}
    chunks = sorted(rows, key=lambda r: (names.get(str(r.doc_id), ""), r.sequence))
    return [(names.get(str(r.doc_id), "?"), keys.encryptor(r.key_version).decrypt_text(
        r.chunk_id, r.text_ciphertext, r.text_mac, r.seal_format)) for r in chunks]


def evaluate(formats: list[str], top_k: int, workdir: Path, dump: Path | None = None) -> dict:
    """Build the corpus, ingest each format as a tenant, ask every question of each; the figures per format."""
    from ingest_pipeline import cli

    _, questions = load_qa()
    queries = [q["question"] for q in questions]
    files = build_corpus(workdir / "corpus")
    for fmt in formats:
        cli.upload(tenant_of(fmt), [str(path) for path in files[fmt]])
    tick = time.perf_counter()
    summary = cli.ingest(show_progress=False)
    ingest_s = time.perf_counter() - tick
    if summary["failed_runs"]:
        raise RuntimeError(f"ingest failed: {summary['runs']}")
    status = cli.status()["tenants"]
    rows = []
    for fmt in formats:
        tenant = tenant_of(fmt)
        hits = cli.search(tenant, queries, top_k)
        chunks = stored_chunks(tenant)
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            (dump / f"{fmt}.txt").write_text("".join(f"==== {name} #{n}\n{text}\n" for n, (name, text)
                                                     in enumerate(chunks)))
        chunk_texts = [text for _, text in chunks]
        top = [answered([h["text"] for h in got], q["answers"]) for got, q in zip(hits, questions, strict=True)]
        first = [answered([h["text"] for h in got[:1]], q["answers"]) for got, q in zip(hits, questions, strict=True)]
        ceiling = [answered(chunk_texts, q["answers"]) for q in questions]
        cited = [bool(got) and (got[0].get("page") is not None or got[0].get("section") is not None) for got in hits]
        rows.append({
            "format": fmt, "documents": status.get(tenant, {}).get("documents", 0),
            "quarantined": status.get(tenant, {}).get("quarantined", 0), "chunks": len(chunks),
            f"answer_in_top_{top_k}": round(sum(top) / len(top), 4), "answer_at_1": round(sum(first) / len(first), 4),
            "answer_in_chunks": round(sum(ceiling) / len(ceiling), 4),
            "top_hit_cited": round(sum(cited) / len(cited), 4),
        })
    by_format = {row["format"]: row for row in rows}
    baseline = by_format.get(BASELINE)
    for row in rows:
        if baseline is not None:
            delta = 100 * (row[f"answer_in_top_{top_k}"] - baseline[f"answer_in_top_{top_k}"])
            goal = GOAL_POINTS["scan" if row["format"] in SCANS else "text"]
            row[f"top_{top_k}_vs_txt_points"] = round(delta, 1)
            row["at_1_vs_txt_points"] = round(100 * (row["answer_at_1"] - baseline["answer_at_1"]), 1)
            row["goal_met"] = delta >= -goal
    return {"questions": len(questions), "articles": len(files[BASELINE]), "top_k": top_k,
            "ingest_s": round(ingest_s, 1), "formats": rows}


def table(report: dict) -> str:
    """The per-format figures as a Markdown table (pasted into the README as it is)."""
    k = report["top_k"]
    columns = ["format", "documents", "quarantined", "chunks", f"answer_in_top_{k}", f"top_{k}_vs_txt_points",
               "answer_at_1", "at_1_vs_txt_points", "goal_met", "answer_in_chunks", "top_hit_cited"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in report["formats"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, of: " + ", ".join(FORMATS))
    parser.add_argument("--dump", type=Path, help="write each format's stored chunks to DIR/<format>.txt")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    formats = [fmt for fmt in args.formats.split(",") if fmt]
    if unknown := sorted(set(formats) - set(FORMATS)):
        parser.error(f"unknown formats: {', '.join(unknown)}")
    if BASELINE not in formats:
        formats.insert(0, BASELINE)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ingest-formats-") as workdir, scratch_installation("ingest-fmt-"):
        report = evaluate(formats, args.top_k, Path(workdir), args.dump)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(table(report))
    print(f"\n{report['questions']} questions, {report['articles']} articles; ingest {report['ingest_s']} s, "
          f"all {report['seconds']} s")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
