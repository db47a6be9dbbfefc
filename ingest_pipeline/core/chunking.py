"""Token-aware chunking with the embedding model's own tokenizer, so no chunk is silently truncated.

Each chunk carries the page and the section path in force where its body starts (after the headings it opens
with), from the location markers of the extracted text (`ExtractedText.pages`, `.sections`).

The formats read before markers existed (`WHOLE_TEXT_FORMATS`) are chunked as one text, exactly as before: their
chunk texts, and so their chunk ids and embeddings, do not depend on the markers. The business formats are
chunked page by page and section by section, so that a chunk never crosses a slide, a sheet or a heading (a
heading directly followed by another stays with it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

from ingest_pipeline.core.extraction import MARKDOWN_FORMATS, ExtractedText, Location, label_at

# all-MiniLM-L6-v2 reads 256 word pieces, two of which are [CLS] and [SEP].
DEFAULT_MAX_TOKENS = 254
DEFAULT_OVERLAP_TOKENS = 24
# Chunked as one text whatever their markers: existing documents' chunk texts must stay byte-identical.
WHOLE_TEXT_FORMATS = frozenset({"text", "markdown", "html", "pdf"})
_LEADING_HEADINGS = re.compile(r"(?: {0,3}#{1,6}[ \t][^\n]*(?:\n+|$))+")


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document: its place in the document, its text and tokens, and where it starts (`page`: a
    PDF page or slide number, a sheet name; `section`: a heading path such as "Terms > Payment"), when known."""

    sequence: int
    text: str
    token_count: int
    page: str | None = None
    section: str | None = None


class Chunker:
    """Splits text at semantic boundaries (headings, paragraphs, sentences) into token-bounded chunks."""

    def __init__(
        self,
        tokenizer_file: str | Path,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    ):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The splitter must count content tokens only; special tokens are budgeted in max_tokens.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens
        self._text = TextSplitter.from_huggingface_tokenizer(self.tokenizer, max_tokens, overlap_tokens)
        self._markdown = MarkdownSplitter.from_huggingface_tokenizer(self.tokenizer, max_tokens, overlap_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, text: str, fmt: str = "text", pages: Sequence[Location] = (),
              sections: Sequence[Location] = ()) -> list[Chunk]:
        """The text's chunks (Markdown formats split at headings first), each with the page and section that the
        markers give at its first character."""
        markdown = fmt in MARKDOWN_FORMATS
        chunks = []
        for offset, piece in self._pieces(text, fmt, pages, sections):
            if not piece.strip():
                continue
            leading = _LEADING_HEADINGS.match(piece) if markdown else None
            body = offset + min(leading.end(), len(piece) - 1) if leading else offset
            chunks.append(Chunk(sequence=len(chunks), text=piece, token_count=self.count_tokens(piece),
                                page=label_at(pages, body), section=label_at(sections, body)))
        return chunks

    def _pieces(self, text: str, fmt: str, pages: Sequence[Location],
                sections: Sequence[Location]) -> Iterator[tuple[int, str]]:
        """(offset, chunk text) of each chunk: of the whole text, or of each page and section apart."""
        splitter = self._markdown if fmt in MARKDOWN_FORMATS else self._text
        if fmt in WHOLE_TEXT_FORMATS or not (pages or sections):
            yield from splitter.chunk_indices(text)
            return
        for start, end in pairwise(_boundaries(text, pages, sections)):
            for offset, piece in splitter.chunk_indices(text[start:end]):
                yield start + offset, piece

    def split_extracted(self, extracted: ExtractedText) -> list[Chunk]:
        """The chunks of an extracted document, with its page and section markers."""
        return self.split(extracted.text, extracted.format, extracted.pages, extracted.sections)


def _boundaries(text: str, pages: Sequence[Location], sections: Sequence[Location]) -> list[int]:
    """Where the text is cut before chunking: at every page, and at every section that follows some body text
    (not only headings) since the last cut; with 0 and the text's end."""
    cuts = [0]
    page_starts = {page.offset for page in pages}
    for offset in sorted(page_starts | {section.offset for section in sections}):
        if not 0 < offset < len(text):
            continue
        segment = text[cuts[-1]:offset]
        only_headings = _LEADING_HEADINGS.fullmatch(segment.strip() + "\n") is not None
        if offset in page_starts or (segment.strip() and not only_headings):
            cuts.append(offset)
    return [*cuts, len(text)]
