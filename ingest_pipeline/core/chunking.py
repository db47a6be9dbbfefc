"""Token-aware chunking with the embedding model's own tokenizer, so no chunk is silently truncated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

# all-MiniLM-L6-v2 reads 256 word pieces, two of which are [CLS] and [SEP].
DEFAULT_MAX_TOKENS = 254
DEFAULT_OVERLAP_TOKENS = 24


@dataclass(frozen=True)
class Chunk:
    sequence: int
    text: str
    token_count: int


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

    def split(self, text: str, fmt: str = "text") -> list[Chunk]:
        splitter = self._markdown if fmt == "markdown" else self._text
        pieces = [piece for piece in splitter.chunks(text) if piece.strip()]
        return [Chunk(sequence=i, text=piece, token_count=self.count_tokens(piece)) for i, piece in enumerate(pieces)]
