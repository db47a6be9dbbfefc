"""Text extraction from uploaded bytes (.txt, .md, .html, .pdf) with clear, content-free refusals."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from bs4 import BeautifulSoup
from charset_normalizer import from_bytes
from pypdf import PdfReader
from pypdf.errors import PdfReadError

DEFAULT_MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
CHARSET_DETECTION_MIN_BYTES = 2048
TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES


class UnreadableDocument(ValueError):
    """A document that cannot be turned into text. The message names the reason, never the content."""

    def __init__(self, document_name: str, reason: str):
        super().__init__(f"{document_name}: {reason}")
        self.document_name = document_name
        self.reason = reason


@dataclass(frozen=True)
class ExtractedText:
    text: str
    format: str  # "text", "markdown", "html" or "pdf"


def extract_text(
    document_name: str, data: bytes, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> ExtractedText:
    """Extract plain text from a document's bytes, choosing the parser by file extension."""
    suffix = PurePosixPath(document_name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnreadableDocument(
            document_name, f"unsupported format {suffix or '(no extension)'!r}; "
            f"accepted: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    if len(data) > max_bytes:
        raise UnreadableDocument(document_name, f"too large: {len(data)} bytes, the limit is {max_bytes}")
    if not data.strip():
        raise UnreadableDocument(document_name, "empty document")

    if suffix in PDF_SUFFIXES:
        text, fmt = _pdf_text(document_name, data), "pdf"
    elif suffix in HTML_SUFFIXES:
        text, fmt = _html_text(_decode(document_name, data)), "html"
    else:
        text = _decode(document_name, data)
        fmt = "markdown" if suffix in {".md", ".markdown"} else "text"

    text = _normalise_whitespace(text)
    if not text:
        raise UnreadableDocument(document_name, "no extractable text")
    return ExtractedText(text=text, format=fmt)


def _decode(document_name: str, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise UnreadableDocument(document_name, "not text: binary content (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Encoding detection needs evidence: short texts are read as Windows-1252, the commonest legacy encoding.
    best = from_bytes(data).best() if len(data) >= CHARSET_DETECTION_MIN_BYTES else None
    if best is not None:
        return str(best)
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise UnreadableDocument(document_name, "not text: no character encoding fits the bytes") from None


def _html_text(markup: str) -> str:
    soup = BeautifulSoup(markup, "html.parser")
    for element in soup(["script", "style", "noscript", "template", "head"]):
        element.decompose()
    return soup.get_text("\n")


def _pdf_text(document_name: str, data: bytes) -> str:
    if not data.startswith(b"%PDF-"):
        raise UnreadableDocument(document_name, "corrupt PDF: no PDF header")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # An owner-password-only PDF opens with the empty user password; anything else is refused.
            try:
                opened = reader.decrypt("")
            except Exception:
                opened = 0
            if not opened:
                raise UnreadableDocument(document_name, "encrypted PDF (password required)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnreadableDocument:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        # The parser's message can quote document bytes, so only its type is kept.
        raise UnreadableDocument(document_name, f"corrupt PDF ({type(exc).__name__})") from None
    if not any(page.strip() for page in pages):
        raise UnreadableDocument(document_name, "no extractable text in PDF (scanned images?)")
    return "\n\n".join(pages)


_TRAILING_SPACE = re.compile(r"[ \t\r\f\v]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def _normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\x00", "")
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
