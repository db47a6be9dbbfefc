"""Text extraction from uploaded bytes with clear, content-free refusals.

The format is decided by the content (magic bytes, container structure), the extension being a hint only
(`ingest_pipeline.core.formats.detect_format`): .txt, .md, .html and PDFs are read here; the business formats
(.docx, .pptx, .xlsx, .csv, OpenDocument, .rtf, .epub, .eml) by `ingest_pipeline.core.formats`; scanned PDF pages
and images (PNG, JPEG, TIFF) through OCR (`ingest_pipeline.core.ocr`) when it is enabled.

An `ExtractedText` carries location markers beside its text: `pages` (a PDF page, a slide, a sheet) and
`sections` (the heading path of Markdown headings), each a `Location` at the character offset where it starts;
the chunker gives each chunk the page and section in force where its body starts.

Every refusal is an `UnreadableDocument` with a stable machine `code` (a `ReasonCode`) and a human reason;
both name the document at most, never quote its bytes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bs4 import BeautifulSoup
from charset_normalizer import from_bytes
from pypdf import PdfReader
from pypdf.errors import LimitReachedError, PdfReadError

if TYPE_CHECKING:
    from ingest_pipeline.core.ocr import OcrPages, OcrSettings

DEFAULT_MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
CHARSET_DETECTION_MIN_BYTES = 2048
TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
# The business formats, read by ingest_pipeline.core.formats.
OFFICE_SUFFIXES = {".docx", ".pptx", ".xlsx", ".odt", ".ods", ".odp", ".rtf", ".epub", ".eml", ".csv"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | OFFICE_SUFFIXES
# Formats whose extracted text is Markdown: chunked at headings, and their headings give the section paths.
MARKDOWN_FORMATS = frozenset({"markdown", "docx", "pptx", "xlsx", "csv", "odt", "ods", "odp", "epub", "eml"})
# Decoded text whose sample has more than this share of control characters (other than tab, newlines, form
# feed and escape) is binary data that happened to decode.
BINARY_CONTROL_SHARE = 0.01
_BINARY_SAMPLE_CHARS = 65_536
_CONTROL_CHARACTERS = re.compile(r"[\x01-\x08\x0e-\x1a\x1c-\x1f\x7f]")


class ReasonCode(StrEnum):
    """Why a document was quarantined or refused: stable codes for machines, next to the human reason."""

    EMPTY = "empty"  # no bytes, or only whitespace
    INVALID_ENCODING = "invalid-encoding"  # not UTF-8, and no other encoding fits with confidence
    BINARY = "binary"  # NUL bytes or control characters: not text, whatever the extension says
    ENCRYPTED_PDF = "encrypted-pdf"  # a PDF that needs a user password
    CORRUPT_PDF = "corrupt-pdf"  # a PDF the parser cannot read
    # a PDF stream inflates beyond the parser's limit, or a container (Office, OpenDocument, EPUB) declares
    # members that inflate beyond the limits or at a ratio no document has (a bomb?); refused before inflating
    DECOMPRESSION_LIMIT = "decompression-limit"
    UNSUPPORTED_FORMAT = "unsupported-format"  # not read: legacy .doc/.xls, images with OCR off
    ENCRYPTED_DOCUMENT = "encrypted-document"  # an Office file or container member that needs a password
    CORRUPT_DOCUMENT = "corrupt-document"  # an Office, OpenDocument, EPUB or RTF file its parser cannot read
    # a container holding what no honest document does: a member path with '..' or an absolute one, an XML
    # DTD or entity declaration (entity expansion, external entities) in a document part
    UNSAFE_DOCUMENT = "unsafe-document"
    CONTENT_LIMIT = "content-limit"  # more cells, slides, members or attachments than extraction reads
    CORRUPT_IMAGE = "corrupt-image"  # an image (PNG, JPEG, TIFF) that cannot be decoded: truncated, broken
    IMAGE_TOO_LARGE = "image-too-large"  # an image that declares more pixels than OCR takes (a decompression bomb?)
    TOO_MANY_PAGES = "too-many-pages"  # more pages to OCR than the per-document limit
    OCR_TIME_LIMIT = "ocr-time-limit"  # OCR of one page took longer than the per-page limit
    TOO_LARGE = "too-large"  # more bytes than the configured maximum; refused before it is read
    NO_TEXT = "no-text"  # parsed, but no text in it (a scanned PDF, markup only)
    TIME_LIMIT = "time-limit"  # extraction and chunking took longer than the time bound
    MEMORY_LIMIT = "memory-limit"  # extraction and chunking needed more memory than the bound
    TOO_DEEPLY_NESTED = "too-deeply-nested"  # markup nested deeper than the parser can follow
    CRASHED = "crashed"  # the extraction process died (a parser crash, or memory exhausted natively)
    PARSER_ERROR = "parser-error"  # an unexpected parser exception (its type is kept, never its message)
    BAD_NAME = "bad-name"  # a file name with control characters, '..', or separators that do not round-trip
    SYMLINK = "symlink"  # a symbolic link: never followed, wherever it points
    SPECIAL_FILE = "special-file"  # a FIFO, socket or device node: not a regular file
    UNREADABLE = "unreadable"  # any other refusal


class UnreadableDocument(ValueError):
    """A document that cannot be turned into text. The message names the reason, never the content.

    `code` is a stable `ReasonCode`; `content_sha256` is the hash of the bytes refused, when they were read.
    `limits` is None when the content is at fault; the sandbox sets it to the limits a refusal was made under
    when a limit made it (time-limit, memory-limit, crashed, too-large), e.g. {"timeout_s": 60}.
    """

    def __init__(self, document_name: str, reason: str, code: ReasonCode | str = ReasonCode.UNREADABLE,
                 content_sha256: str | None = None):
        super().__init__(f"{document_name}: {reason}")
        self.document_name = document_name
        self.reason = reason
        self.code = ReasonCode(code)
        self.content_sha256 = content_sha256
        self.limits: dict[str, float] | None = None


@dataclass(frozen=True)
class Location:
    """Where a page or a section starts in an extracted text: its character offset and its label (a PDF page or
    slide number such as "3", a sheet name, or a heading path such as "Terms > Payment")."""

    offset: int
    label: str


@dataclass(frozen=True)
class ExtractedText:
    """A document's text, its format ("text", "markdown", "html", "pdf", "docx", "pptx", "xlsx", "csv", "odt",
    "ods", "odp", "rtf", "epub", "eml" or "image"), where its pages and sections start (`Location`s by offset), and
    how many of its pages were read by OCR (PDF pages without a text layer, image frames)."""

    text: str
    format: str
    pages: tuple[Location, ...] = ()
    sections: tuple[Location, ...] = ()
    pages_ocred: int = 0


def label_at(locations: Sequence[Location], offset: int) -> str | None:
    """The label of the last location starting at or before `offset` (None before the first one)."""
    position = bisect_right([location.offset for location in locations], offset)
    return locations[position - 1].label if position else None


def extract_text(
    document_name: str, data: bytes, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, ocr: OcrSettings | None = None
) -> ExtractedText:
    """Extract plain text from a document's bytes, with its page and section markers, choosing the parser by
    the content (`formats.detect_format`; the extension decides only where the content does not).

    With `ocr` enabled, PDF pages without a text layer and images (PNG, JPEG, TIFF, by their signature, or by
    their extension when the content names no other format) are read by OCR; without it (the default) they are
    refused as no-text and unsupported-format.

    Raises UnreadableDocument (with its `code`) for anything that is not readable text. Run it under
    `ingest_pipeline.core.sandbox` when the bytes come from outside: parsers can be made to take unbounded
    time or memory, which only a separate process can bound.
    """
    from ingest_pipeline.core import formats  # formats builds on this module's refusals

    suffix = PurePosixPath(document_name).suffix.lower()
    fmt = _image_or_format(document_name, suffix, data, ocr)
    if fmt is None:
        raise UnreadableDocument(
            document_name, f"unsupported format {suffix or '(no extension)'!r}; "
            f"accepted: {', '.join(sorted(SUPPORTED_SUFFIXES))}", ReasonCode.UNSUPPORTED_FORMAT,
        )
    if len(data) > max_bytes:
        raise UnreadableDocument(document_name, f"too large: {len(data)} bytes, the limit is {max_bytes}",
                                 ReasonCode.TOO_LARGE)
    if not data.strip():
        raise UnreadableDocument(document_name, "empty document", ReasonCode.EMPTY)

    pages: list[Location] = []
    pages_ocred = 0
    try:
        if fmt == "image":
            from ingest_pipeline.core.ocr import ocr_image

            read = ocr_image(document_name, data, ocr)
            (text, pages), pages_ocred = _joined_pages(read.texts), read.pages_ocred
        elif fmt == "pdf":
            read = pdf_page_texts(document_name, data, ocr)
            (text, pages), pages_ocred = _joined_pages(read.texts), read.pages_ocred
        elif fmt == "html":
            text = _html_text(_decode(document_name, data))
        elif fmt in ("text", "markdown"):
            text = _decode(document_name, data)
        else:
            text, pages = formats.read_format(document_name, data, fmt, max_bytes)
    except RecursionError:
        raise UnreadableDocument(document_name, "nested too deeply for the parser", ReasonCode.TOO_DEEPLY_NESTED) \
            from None
    except MemoryError:
        raise UnreadableDocument(document_name, "extraction ran out of memory", ReasonCode.MEMORY_LIMIT) from None

    text, offsets = _normalise_whitespace(text, [page.offset for page in pages])
    if not text:
        raise UnreadableDocument(document_name, "no extractable text", ReasonCode.NO_TEXT)
    sections = heading_sections(text) if fmt in MARKDOWN_FORMATS else ()
    pages = [Location(offset, page.label) for offset, page in zip(offsets, pages, strict=True)]
    return ExtractedText(text=text, format=fmt, pages=tuple(pages), sections=sections, pages_ocred=pages_ocred)


def _image_or_format(document_name: str, suffix: str, data: bytes, ocr: OcrSettings | None) -> str | None:
    """"image" for an image to OCR (its signature, or its extension where the content names no other format),
    else the format the content or the extension names (None: unsupported). With OCR off, images are not read."""
    from ingest_pipeline.core import formats
    from ingest_pipeline.core.ocr import IMAGE_SUFFIXES, image_kind

    if ocr is not None and ocr.enabled and image_kind(data) is not None:
        return "image"
    fmt = formats.detect_format(document_name, data)
    if fmt is None and ocr is not None and ocr.enabled and suffix in IMAGE_SUFFIXES:
        return "image"
    return fmt


def _joined_pages(texts: Sequence[str]) -> tuple[str, list[Location]]:
    """Page texts joined by blank lines, and where each page (numbered from 1) starts in the result."""
    starts, offset = [], 0
    for number, page in enumerate(texts, start=1):
        starts.append(Location(offset, str(number)))
        offset += len(page) + 2
    return "\n\n".join(texts), starts


def read_document(folder: str | Path, document_name: str, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
                  ) -> tuple[bytes, str]:
    """The bytes of `folder/document_name` and their SHA-256, never following a symbolic link.

    Every component of the name is opened relative to the one before with O_NOFOLLOW, so neither the file
    nor a folder on its way may be a link out of `folder`. A symlink, a FIFO, socket or device, and a file
    larger than `max_bytes` are refused (UnreadableDocument with code symlink, special-file or too-large)
    before a byte is read. A missing file raises FileNotFoundError.
    """
    parts = PurePosixPath(document_name).parts
    if not parts or any(part in ("", ".", "..") for part in parts) or PurePosixPath(document_name).is_absolute():
        raise UnreadableDocument(document_name, "not a relative document name", ReasonCode.BAD_NAME)
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for position, part in enumerate(parts):
            last = position == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                opened = os.open(part, flags, dir_fd=descriptor)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_symlink(part, descriptor):
                    raise UnreadableDocument(document_name, "a symbolic link; links are never followed",
                                             ReasonCode.SYMLINK) from None
                raise
            os.close(descriptor)
            descriptor = opened
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableDocument(document_name, "not a regular file (a FIFO, socket or device)",
                                     ReasonCode.SPECIAL_FILE)
        if info.st_size > max_bytes:
            raise UnreadableDocument(document_name, f"too large: {info.st_size} bytes, the limit is {max_bytes}",
                                     ReasonCode.TOO_LARGE)
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)  # a file that grew past the limit since fstat is refused too
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise UnreadableDocument(document_name, f"too large: more than {max_bytes} bytes", ReasonCode.TOO_LARGE)
    return data, hashlib.sha256(data).hexdigest()


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def decode_text(document_name: str, data: bytes) -> str:
    """Bytes as text: UTF-8 (a BOM dropped), else a legacy encoding found with confidence; binary data (NUL
    bytes, control characters) and undecodable bytes are refused (binary, invalid-encoding)."""
    return _decode(document_name, data)


def _decode(document_name: str, data: bytes) -> str:
    if b"\x00" in data:
        raise UnreadableDocument(document_name, "not text: binary content (NUL bytes)", ReasonCode.BINARY)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = _decode_legacy(document_name, data)
    sample = text[:_BINARY_SAMPLE_CHARS]
    if len(_CONTROL_CHARACTERS.findall(sample)) > BINARY_CONTROL_SHARE * len(sample):
        raise UnreadableDocument(document_name, "not text: binary content (control characters)", ReasonCode.BINARY)
    return text


def _decode_legacy(document_name: str, data: bytes) -> str:
    """Bytes that are not UTF-8: a legacy encoding that charset_normalizer finds with confidence, or a refusal.

    Detection needs evidence: a short text is first tried as Windows-1252 alone (the commonest legacy
    encoding), and accepted only if it reads as text (the detector's chaos measure stays low).
    """
    best = None
    if len(data) < CHARSET_DETECTION_MIN_BYTES:
        best = from_bytes(data, cp_isolation=["cp1252"]).best()
    if best is None:
        best = from_bytes(data).best()
    if best is None:
        raise UnreadableDocument(
            document_name, "not text: not UTF-8, and no other character encoding fits the bytes with confidence",
            ReasonCode.INVALID_ENCODING,
        )
    return str(best)


def _html_text(markup: str) -> str:
    soup = BeautifulSoup(markup, "html.parser")
    for element in soup(["script", "style", "noscript", "template", "head"]):
        element.decompose()
    return soup.get_text("\n")


def pdf_page_texts(document_name: str, data: bytes, ocr: OcrSettings | None = None) -> OcrPages:
    """A PDF's text page by page (an `OcrPages`: texts and pages_ocred), pages without a text layer OCRed when
    `ocr` is enabled. Joined with blank lines they are the document's text; a page with a text layer is never
    OCRed, so a PDF whose every page has text reads exactly as without OCR."""
    from ingest_pipeline.core.ocr import OcrPages, ocr_pdf_pages

    pages = _pdf_layer_pages(document_name, data)
    read = ocr_pdf_pages(document_name, data, pages, ocr) if ocr is not None else OcrPages(pages, 0)
    if not any(page.strip() for page in read.texts):
        if read.pages_ocred:
            raise UnreadableDocument(document_name, "no text in PDF, not even by OCR", ReasonCode.NO_TEXT)
        raise UnreadableDocument(document_name, "no extractable text in PDF (scanned images?)", ReasonCode.NO_TEXT)
    return read


def _pdf_layer_pages(document_name: str, data: bytes) -> list[str]:
    """The text layer of each page of a PDF ("" for a page without one)."""
    if not data.startswith(b"%PDF-"):
        raise UnreadableDocument(document_name, "corrupt PDF: no PDF header", ReasonCode.CORRUPT_PDF)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # An owner-password-only PDF opens with the empty user password; anything else is refused.
            try:
                opened = reader.decrypt("")
            except Exception:
                opened = 0
            if not opened:
                raise UnreadableDocument(document_name, "encrypted PDF (password required)",
                                         ReasonCode.ENCRYPTED_PDF)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (UnreadableDocument, RecursionError, MemoryError):
        raise
    except LimitReachedError:
        raise UnreadableDocument(
            document_name, "PDF stream inflates beyond the parser's limit (a decompression bomb?)",
            ReasonCode.DECOMPRESSION_LIMIT,
        ) from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        # The parser's message can quote document bytes, so only its type is kept.
        raise UnreadableDocument(document_name, f"corrupt PDF ({type(exc).__name__})", ReasonCode.CORRUPT_PDF) \
            from None
    return pages


_TRAILING_SPACE = re.compile(r"[ \t\r\f\v]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_CRLF = re.compile(r"\r\n")
_NUL = re.compile(r"\x00")


def _normalise_whitespace(text: str, offsets: Sequence[int] = ()) -> tuple[str, list[int]]:
    """The text with CRLF, NULs, trailing spaces and runs of blank lines normalised and its ends stripped, and
    `offsets` into the text moved to where their characters are in the result."""
    moved = list(offsets)
    for pattern, replacement in ((_CRLF, "\n"), (_NUL, ""), (_TRAILING_SPACE, "\n"), (_BLANK_LINES, "\n\n")):
        text, moved = _substitute(pattern, replacement, text, moved)
    lead = len(text) - len(text.lstrip())
    text = text.strip()
    return text, [min(max(0, offset - lead), len(text)) for offset in moved]


def _substitute(pattern: re.Pattern, replacement: str, text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """`pattern.sub(replacement, text)`, and the offsets moved with it (one inside a match goes to its start)."""
    if not offsets:
        return pattern.sub(replacement, text), offsets
    starts, ends, shifts = [], [], []
    shift = 0
    for match in pattern.finditer(text):
        starts.append(match.start())
        ends.append(match.end())
        shift += len(replacement) - (match.end() - match.start())
        shifts.append(shift)
    moved = []
    for offset in offsets:
        index = bisect_right(starts, offset) - 1
        if index < 0:
            moved.append(offset)
        elif offset < ends[index]:  # inside a match: kept within its replacement
            before = shifts[index - 1] if index else 0
            moved.append(starts[index] + before + min(offset - starts[index], len(replacement)))
        else:
            moved.append(offset + shifts[index])
    return pattern.sub(replacement, text), moved


_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def heading_sections(text: str) -> tuple[Location, ...]:
    """Where each Markdown heading (ATX `#`, or a one-line paragraph underlined with = or -) starts, labelled with
    its heading path ("Terms > Payment"); headings inside fenced code are not headings."""
    sections: list[Location] = []
    path: list[tuple[int, str]] = []
    fence = None
    lines = text.split("\n")
    offset = 0
    previous_blank = True
    for number, line in enumerate(lines):
        level = title = None
        fenced = _FENCE.match(line)
        if fence is not None:
            if fenced and fenced.group(1)[0] == fence:
                fence = None
        elif fenced:
            fence = fenced.group(1)[0]
        elif heading := _HEADING.match(line):
            level, title = len(heading.group(1)), heading.group(2).strip()
        elif (line.strip() and previous_blank and number + 1 < len(lines)
              and (underline := _SETEXT.match(lines[number + 1])) and not line.lstrip().startswith(("-", "*", ">"))
              and not _SETEXT.match(line)):
            level, title = (1 if underline.group(1)[0] == "=" else 2), line.strip()
        if level is not None and title:
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, title))
            sections.append(Location(offset, " > ".join(part for _, part in path)))
        previous_blank = not line.strip()
        offset += len(line) + 1
    return tuple(sections)
