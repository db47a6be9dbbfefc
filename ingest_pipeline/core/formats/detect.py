"""Which format a document is, by its content first (magic bytes, container structure), its extension second."""

from __future__ import annotations

import re
import zipfile
from pathlib import PurePosixPath

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument
from ingest_pipeline.core.formats.containers import open_zip

# Every format `detect_format` names, and every format a document's text can be extracted as: those and "image"
# (an image read by OCR, which `extraction` decides). The ledger records a document's format by these names and
# search filters on them.
DETECTED_FORMATS = ("pdf", "docx", "pptx", "xlsx", "csv", "odt", "ods", "odp", "rtf", "epub", "eml", "html",
                    "markdown", "text")
DOCUMENT_FORMATS = (*DETECTED_FORMATS, "image")
# The format an extension stands for, when the content does not decide.
SUFFIX_FORMATS = {
    ".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
    ".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx", ".csv": "csv", ".odt": "odt", ".ods": "ods",
    ".odp": "odp", ".rtf": "rtf", ".epub": "epub", ".eml": "eml",
}
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_OOXML_PARTS = (("word/", "docx"), ("ppt/", "pptx"), ("xl/", "xlsx"))
_MIMETYPES = {
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
    "application/vnd.oasis.opendocument.presentation": "odp",
    "application/epub+zip": "epub",
}
_HEADER_LINE = re.compile(rb"^([!-9;-~]+):")
_MAIL_HEADERS = {b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"received",
                 b"return-path", b"reply-to"}


def detect_format(document_name: str, data: bytes) -> str | None:
    """The document's format ("pdf", "docx", "pptx", "xlsx", "csv", "odt", "ods", "odp", "rtf", "epub", "eml",
    "html", "markdown" or "text"), or None for one the pipeline does not read.

    The content decides first: %PDF, a ZIP container whose [Content_Types].xml names word/, ppt/ or xl/ parts
    (OOXML) or whose `mimetype` member names an OpenDocument or EPUB type, `{\\rtf`. An OLE2
    compound file is refused: an encrypted OOXML file (encrypted-document) or a legacy binary Office file
    (unsupported-format). Otherwise the extension decides, and a file with none (or an unknown one) that starts
    with RFC 822 headers is an e-mail. Images are left to the extension as before (a .png is unsupported, a
    .txt holding one is binary) until they are OCRed.
    """
    suffix = PurePosixPath(document_name).suffix.lower()
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(_OLE2):
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise UnreadableDocument(document_name, "encrypted Office document (password required)",
                                     ReasonCode.ENCRYPTED_DOCUMENT)
        raise UnreadableDocument(document_name, "a legacy binary Office file (.doc, .xls, .ppt or .msg), which is "
                                 "not read; save it as .docx, .xlsx or .pptx", ReasonCode.UNSUPPORTED_FORMAT)
    if data.startswith(_ZIP):
        container_format = _container_format(document_name, data)
        if container_format is not None:
            return container_format
    if data[:64].lstrip()[:5] == b"{\\rtf":
        return "rtf"
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    return "eml" if _looks_like_email(data) else None


def _container_format(document_name: str, data: bytes) -> str | None:
    try:
        container = open_zip(document_name, data)
    except UnreadableDocument:
        return None  # a truncated container: the extension says which reader refuses it
    with container:
        names = set(container.namelist())
        if "[Content_Types].xml" in names:
            for prefix, fmt in _OOXML_PARTS:
                if any(name.startswith(prefix) for name in names):
                    return fmt
        if "mimetype" in names:
            member = container.getinfo("mimetype")
            if member.file_size <= 128:
                try:
                    mimetype = container.read(member).decode("ascii", "replace").strip()
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, OSError, EOFError):
                    return None
                return _MIMETYPES.get(mimetype)
    return None


def _looks_like_email(data: bytes) -> bool:
    """Whether the bytes open with an RFC 822 header block naming at least two of the usual mail headers."""
    names = set()
    for number, line in enumerate(data[:16384].splitlines()):
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t") or (number == 0 and line.startswith(b"From ")):
            continue  # a folded header line, or an mbox separator
        match = _HEADER_LINE.match(line)
        if match is None:
            return False
        names.add(match.group(1).lower())
    return len(names & _MAIL_HEADERS) >= 2
