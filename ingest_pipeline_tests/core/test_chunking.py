"""Unit tests for ingest_pipeline.core.chunking (and a small check of core.embedding) with the bundled model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pypdf import PdfReader  # noqa: E402

from ingest_pipeline.core.chunking import DEFAULT_MAX_TOKENS, Chunk, Chunker  # noqa: E402
from ingest_pipeline.core.embedding import Embedder, bundled_model_path  # noqa: E402
from ingest_pipeline.core.extraction import extract_text, label_at  # noqa: E402

MODEL_MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length, special tokens included

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "ingestion",
    "pipeline",
    "tenant",
    "encryption",
    "vector",
    "index",
    "chunk",
    "tokenizer",
    "semantic",
    "boundary",
    "paragraph",
    "heading",
    "résumé",
    "naïve",
    "東京",
    "Zürich",
    "3.14159",
    "e-mail@example.com",
    "well-known",
]


def _sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Sentence {i} says " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 28))) + "."
        for i in range(count)
    ]


def _plain_text(sentences: list[str]) -> str:
    return "\n\n".join(" ".join(sentences[i : i + 7]) for i in range(0, len(sentences), 7))


def _markdown_text(sentences: list[str]) -> str:
    parts = ["# Annual report"]
    for section, start in enumerate(range(0, len(sentences), 12)):
        parts.append(f"## Section {section}")
        block = sentences[start : start + 12]
        parts.append(" ".join(block[:6]))
        parts.append("\n".join(f"- {s}" for s in block[6:9]))
        parts.append(f"### Details {section}")
        parts.append(" ".join(block[9:]))
    return "\n\n".join(parts)


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(bundled_model_path() / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)


def _model_tokens(hf_tokenizer, text: str) -> int:
    return len(hf_tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


SENTENCES = _sentences(400, seed=7)
PLAIN = _plain_text(SENTENCES)
MD_SENTENCES = _sentences(240, seed=11)
MARKDOWN = _markdown_text(MD_SENTENCES)


def test_bundled_model_declares_max_seq_length_256():
    config = json.loads((bundled_model_path() / "sentence_bert_config.json").read_text())
    assert config["max_seq_length"] == MODEL_MAX_SEQ_LENGTH
    assert DEFAULT_MAX_TOKENS + 2 <= MODEL_MAX_SEQ_LENGTH  # [CLS] + [SEP]


@pytest.mark.parametrize(("text", "fmt"), [(PLAIN, "text"), (MARKDOWN, "markdown")], ids=["plain", "markdown"])
def test_every_chunk_fits_the_model_with_special_tokens(chunker, hf_tokenizer, text, fmt):
    assert _model_tokens(hf_tokenizer, text) > 5 * MODEL_MAX_SEQ_LENGTH  # really long input
    chunks = chunker.split(text, fmt)
    assert len(chunks) > 5
    lengths = [_model_tokens(hf_tokenizer, c.text) for c in chunks]
    assert max(lengths) <= MODEL_MAX_SEQ_LENGTH
    # token_count counts content tokens only, i.e. the model's count minus [CLS] and [SEP]
    assert [c.token_count for c in chunks] == [n - 2 for n in lengths]
    assert all(c.token_count <= DEFAULT_MAX_TOKENS for c in chunks)


def test_a_single_unpunctuated_run_still_fits(chunker, hf_tokenizer):
    rng = random.Random(3)
    text = " ".join(rng.choice(WORDS) for _ in range(3000))
    chunks = chunker.split(text)
    assert len(chunks) > 5
    assert max(_model_tokens(hf_tokenizer, c.text) for c in chunks) <= MODEL_MAX_SEQ_LENGTH


def test_cjk_and_emoji_text_fits(chunker, hf_tokenizer):
    rng = random.Random(5)
    text = "".join(rng.choice("東京都の天気は晴れです。😀🚀ÅÉÎ ") for _ in range(5000))
    chunks = chunker.split(text)
    assert len(chunks) > 1
    assert max(_model_tokens(hf_tokenizer, c.text) for c in chunks) <= MODEL_MAX_SEQ_LENGTH


@pytest.mark.parametrize(("text", "fmt"), [(PLAIN, "text"), (MARKDOWN, "markdown")], ids=["plain", "markdown"])
def test_sequences_are_0_to_n_minus_1(chunker, text, fmt):
    chunks = chunker.split(text, fmt)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert all(isinstance(c, Chunk) for c in chunks)


@pytest.mark.parametrize(("text", "fmt"), [(PLAIN, "text"), (MARKDOWN, "markdown")], ids=["plain", "markdown"])
def test_splitting_is_deterministic(chunker, text, fmt):
    first = chunker.split(text, fmt)
    assert chunker.split(text, fmt) == first
    assert Chunker(bundled_model_path() / "tokenizer.json").split(text, fmt) == first


def test_short_text_is_one_chunk_equal_to_stripped_text(chunker):
    text = "  \n  A short note about the quarterly figures.\n  Second line.  \n\n"
    chunks = chunker.split(text)
    assert len(chunks) == 1
    assert chunks[0].text == text.strip()
    assert chunks[0].sequence == 0
    assert chunks[0].token_count == chunker.count_tokens(text.strip())


def test_short_markdown_is_one_chunk(chunker):
    text = "# Title\n\nOne paragraph.\n"
    assert [c.text for c in chunker.split(text, "markdown")] == [text.strip()]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
def test_blank_text_yields_no_chunks(chunker, text):
    assert chunker.split(text) == []
    assert chunker.split(text, "markdown") == []


@pytest.mark.parametrize(
    ("sentences", "text", "fmt"),
    [(SENTENCES, PLAIN, "text"), (MD_SENTENCES, MARKDOWN, "markdown")],
    ids=["plain", "markdown"],
)
def test_nothing_is_dropped(chunker, sentences, text, fmt):
    chunks = chunker.split(text, fmt)
    missing = [s for s in sentences if not any(s in c.text for c in chunks)]
    assert missing == []
    # every word of the source (headings and list markers included) is somewhere in the chunks
    joined = "\n".join(c.text for c in chunks)
    assert set(re.findall(r"\S+", text)) <= set(re.findall(r"\S+", joined))


def test_chunks_are_substrings_of_the_source(chunker):
    chunks = chunker.split(PLAIN)
    assert all(c.text in PLAIN for c in chunks)
    assert all(c.text == c.text.strip() and c.text for c in chunks)


def test_markdown_chunks_start_at_headings_where_possible(chunker):
    chunks = chunker.split(MARKDOWN, "markdown")
    # The markdown splitter prefers heading boundaries: most chunks begin with a heading.
    starting_with_heading = [c for c in chunks if c.text.startswith("#")]
    assert len(starting_with_heading) >= len(chunks) // 2


def test_count_tokens_excludes_special_tokens(chunker, hf_tokenizer):
    text = "Hello world, this is a test."
    assert chunker.count_tokens(text) == _model_tokens(hf_tokenizer, text) - 2
    assert chunker.count_tokens("") == 0


def test_tokenizer_file_truncation_is_disabled(chunker):
    # The bundled tokenizer.json truncates at 128 tokens; the chunker must count the real length.
    long_text = " ".join(SENTENCES[:40])
    assert chunker.count_tokens(long_text) > 128


def test_smaller_budget_is_respected(hf_tokenizer):
    small = Chunker(bundled_model_path() / "tokenizer.json", max_tokens=64, overlap_tokens=8)
    chunks = small.split(PLAIN)
    assert len(chunks) > 20
    assert max(c.token_count for c in chunks) <= 64
    assert max(_model_tokens(hf_tokenizer, c.text) for c in chunks) <= 66


# --- embedding (kept here: one model load for the whole unit suite) ----------------------------------


def test_embedder_returns_unit_384d_float32_and_ranks_paraphrase_first():
    embedder = Embedder()
    assert embedder.dimension == 384
    assert embedder.max_tokens == MODEL_MAX_SEQ_LENGTH
    vectors = embedder.embed(
        [
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly tax filings are due at the end of March.",
        ]
    )
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.2
    empty = embedder.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


# --- chunk texts unchanged by location markers ---------------------------------------------------------

SAMPLE_CORPUS = Path(__file__).resolve().parents[2] / "ingest_pipeline" / "sample_corpus"
# Written by the Chunker and extract_text of commit 1a242eb (before pages and sections existed): per sample
# document its format, the SHA-256 of its text, and of each chunk's text with its token count.
CHUNKS_BEFORE_MARKERS = Path(__file__).with_name("sample_corpus_chunks.json")


def test_sample_corpus_chunks_are_byte_identical_to_those_before_markers(chunker):
    """Chunk ids and embeddings derive from chunk texts: pages and sections must not change a single byte."""
    expected = json.loads(CHUNKS_BEFORE_MARKERS.read_text())
    documents = sorted(path for path in SAMPLE_CORPUS.rglob("*") if path.is_file() and path.name != "SOURCES.md")
    assert sorted(str(path.relative_to(SAMPLE_CORPUS)) for path in documents) == sorted(expected)
    for path in documents:
        before = expected[str(path.relative_to(SAMPLE_CORPUS))]
        extracted = extract_text(path.name, path.read_bytes())
        chunks = chunker.split_extracted(extracted)
        assert extracted.format == before["format"]
        assert hashlib.sha256(extracted.text.encode()).hexdigest() == before["text_sha256"], path.name
        assert [hashlib.sha256(chunk.text.encode()).hexdigest() for chunk in chunks] == before["chunk_sha256"]
        assert [chunk.token_count for chunk in chunks] == before["token_counts"]
        assert [chunk.sequence for chunk in chunks] == list(range(len(chunks)))
        if extracted.format == "pdf":
            assert [page.label for page in extracted.pages] == [str(n) for n in range(1, len(extracted.pages) + 1)]
            assert chunks[0].page == "1" and chunks[-1].page == extracted.pages[-1].label
            start = 0
            for chunk in chunks:  # each chunk carries the page its first character is on
                start = extracted.text.index(chunk.text, start)
                assert label_at(extracted.pages, start) == chunk.page
        if extracted.format == "markdown":
            assert extracted.sections and all(chunk.section for chunk in chunks[1:])


def test_pdf_page_markers_point_at_each_pages_text(chunker):
    path = SAMPLE_CORPUS / "acme" / "shared-mime-info-spec.pdf"
    extracted = extract_text(path.name, path.read_bytes())
    reader = PdfReader(path)
    assert len(extracted.pages) == len(reader.pages)
    for page, location in zip(reader.pages, extracted.pages, strict=True):
        words = (page.extract_text() or "").split()
        if words:
            assert extracted.text[location.offset:].split()[:len(words[:8])] == words[:8]


def test_markdown_sections_are_heading_paths_and_each_chunk_carries_the_one_at_its_start(chunker):
    text = ("# Contract\n\nPreamble text.\n\n## Terms\n\n### Payment\n\nPay 40 euros.\n\n```\n# not a heading\n```"
            "\n\n## Notice\n\nNinety days.\n\nSetext title\n============\n\nLast words.\n")
    extracted = extract_text("contract.md", text.encode())
    labels = [section.label for section in extracted.sections]
    assert labels == ["Contract", "Contract > Terms", "Contract > Terms > Payment", "Contract > Notice",
                      "Setext title"]
    for section in extracted.sections:
        assert extracted.text[section.offset:].startswith(("#", "Setext"))
    small = Chunker(bundled_model_path() / "tokenizer.json", max_tokens=12, overlap_tokens=0)
    by_text = {chunk.text: chunk.section for chunk in small.split_extracted(extracted)}
    assert next(section for text, section in by_text.items() if "40 euros" in text) == "Contract > Terms > Payment"
    assert next(section for text, section in by_text.items() if "Ninety" in text) == "Contract > Notice"
    assert next(section for text, section in by_text.items() if "Last words" in text) == "Setext title"


def test_a_chunk_built_without_markers_has_no_page_or_section():
    assert Chunk(0, "text", 1) == Chunk(sequence=0, text="text", token_count=1, page=None, section=None)
