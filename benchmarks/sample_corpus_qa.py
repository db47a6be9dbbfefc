"""Makes benchmarks/data/sample_corpus_qa.jsonl: questions about the bundled sample corpus whose answers are
exact substrings of its documents, most of them hinging on a rare word, a name or a number.

Each question is a short cloze: about ten words of a sentence of one document around a rare term (a number,
an identifier, a name or a word found in one document only), with the term replaced by "what"; the answer is
that term. Deterministic (fixed seed); the documents' text is the pipeline's own extraction.

    .venv/bin/python benchmarks/sample_corpus_qa.py
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

OUT = Path(__file__).parent / "data" / "sample_corpus_qa.jsonl"
PER_DOCUMENT = 10
WINDOW = 5  # words kept on each side of the answer
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*[A-Za-z0-9]|[A-Za-z0-9]")


def _rare_kind(token: str, counts: Counter, doc_count: Counter) -> str | None:
    """Why `token` is a good answer (number, identifier, name, rare word), or None."""
    if counts[token.lower()] > 3 or len(token) < 3:
        return None
    if re.fullmatch(r"\d{2,}(\.\d+)?", token):
        return "number"
    if re.search(r"[_\d]", token) and re.search(r"[A-Za-z]", token) or re.search(r"[a-z][A-Z]", token):
        return "identifier"
    if token[0].isupper() and token[1:].islower() and len(token) >= 5:
        return "name"
    if token.isalpha() and token.islower() and len(token) >= 8 and doc_count[token] == 1:
        return "rare-word"
    return None


def main() -> int:
    from ingest_pipeline.core.extraction import extract_text

    corpus = Path(__file__).resolve().parents[1] / "ingest_pipeline" / "sample_corpus"
    texts = {}
    for path in sorted(corpus.glob("*/*")):
        if path.name != "SOURCES.md":
            texts[f"{path.parent.name}/{path.name}"] = " ".join(extract_text(path.name, path.read_bytes()).text.split())
    counts, doc_count = Counter(), Counter()
    for text in texts.values():
        words = [t.lower() for t in _TOKEN.findall(text)]
        counts.update(words)
        doc_count.update(set(words))
    rng = random.Random(16)
    records = []
    for name, text in texts.items():
        candidates = []
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            words = sentence.split()
            if not 8 <= len(words) <= 60:
                continue
            for position, word in enumerate(words):
                token = word.strip(".,;:()[]{}\"'`")
                if not token or not _TOKEN.fullmatch(token):
                    continue
                kind = _rare_kind(token, counts, doc_count)
                if kind is None or sum(t.count(token) for t in texts.values()) > 3:
                    continue
                left = words[max(0, position - WINDOW):position]
                right = words[position + 1:position + 1 + WINDOW]
                question = " ".join([*left, "what", *right]).strip()
                if token.lower() in question.lower() or len(question.split()) < 6:
                    continue
                candidates.append((kind, token, question))
        rng.shuffle(candidates)
        seen: set[str] = set()
        for kind, token, question in candidates:
            if token.lower() in seen:
                continue
            seen.add(token.lower())
            records.append({"id": f"sample-{len(records):03d}", "question": question, "answers": [token],
                            "document": name, "kind": kind})
            if len(seen) == PER_DOCUMENT:
                break
    for record in records:  # every answer is an exact substring of its document
        assert record["answers"][0] in texts[record["document"]], record
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"{len(records)} questions -> {OUT}; kinds: {dict(Counter(r['kind'] for r in records))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
