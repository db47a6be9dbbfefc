"""Token-aware chunking with the embedding model's own tokenizer, so no chunk is silently truncated.

Each chunk carries the page and the section path in force at its first character, from the location markers of
the extracted text (`ExtractedText.pages`, `.sections`); the chunk texts themselves depend only on the text and
its format, so markers never change a chunk (nor its id or embedding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

from ingest_pipeline.core.extraction import MARKDOWN_FORMATS, ExtractedText, Location, label_at

# all-MiniLM-L6-v2 reads 256 word pieces, two of which are [CLS] and [SEP].
DEFAULT_MAX_TOKENS = 254
DEFAULT_OVERLAP_TOKENS = 24


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
        splitter = self._markdown if fmt in MARKDOWN_FORMATS else self._text
        pieces = [(offset, piece) for offset, piece in splitter.chunk_indices(text) if piece.strip()]
        return [Chunk(sequence=i, text=piece, token_count=self.count_tokens(piece), page=label_at(pages, offset),
                      section=label_at(sections, offset)) for i, (offset, piece) in enumerate(pieces)]

    def split_extracted(self, extracted: ExtractedText) -> list[Chunk]:
        """The chunks of an extracted document, with its page and section markers."""
        return self.split(extracted.text, extracted.format, extracted.pages, extracted.sections)
