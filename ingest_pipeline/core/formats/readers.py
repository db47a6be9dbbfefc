"""One reader per business format, each refusing with a reason code what it cannot read."""

from __future__ import annotations

import zipfile
from collections.abc import Callable

from ingest_pipeline.core.extraction import Location, ReasonCode, UnreadableDocument
from ingest_pipeline.core.formats.containers import inspect_zip
from ingest_pipeline.core.formats.epub import read_epub
from ingest_pipeline.core.formats.mail import read_eml
from ingest_pipeline.core.formats.markup import MarkdownText
from ingest_pipeline.core.formats.office import read_csv, read_docx, read_pptx, read_xlsx
from ingest_pipeline.core.formats.opendocument import read_opendocument

_CONTAINERS: dict[str, Callable[[str, bytes], MarkdownText]] = {
    "docx": read_docx, "pptx": read_pptx, "xlsx": read_xlsx,
    "odt": read_opendocument, "ods": read_opendocument, "odp": read_opendocument,
}


def read_format(document_name: str, data: bytes, fmt: str, max_bytes: int) -> tuple[str, list[Location]]:
    """The text of a document in a business format (`fmt` as `detect_format` gave it) and where its pages start.

    A container is inspected before its parser reads it (`containers.inspect_zip`). A parser's own exception is
    a corrupt-document refusal that keeps the exception's type, never its message (it may quote the bytes);
    RecursionError and MemoryError pass through to the caller, which names them.
    """
    try:
        if fmt in _CONTAINERS:
            inspect_zip(document_name, data).close()  # the parser opens the container itself
            out = _CONTAINERS[fmt](document_name, data)
        elif fmt == "epub":
            with inspect_zip(document_name, data, forbid_dtd=False) as container:
                out = read_epub(document_name, container)
        elif fmt == "csv":
            out = read_csv(document_name, data)
        elif fmt == "eml":
            out = read_eml(document_name, data, max_bytes)
        elif fmt == "rtf":
            return _rtf_text(document_name, data), []
        else:
            raise UnreadableDocument(document_name, f"unsupported format {fmt!r}", ReasonCode.UNSUPPORTED_FORMAT)
    except (UnreadableDocument, RecursionError, MemoryError):
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, IndexError, OSError,
            EOFError, LookupError, SyntaxError) as exc:
        raise UnreadableDocument(document_name, f"corrupt {fmt} document ({type(exc).__name__})",
                                 ReasonCode.CORRUPT_DOCUMENT) from None
    return out.build()


def _rtf_text(document_name: str, data: bytes) -> str:
    """RTF's text (striprtf): control words dropped, \\'xx and \\u escapes decoded."""
    from striprtf.striprtf import rtf_to_text

    if not data[:64].lstrip().startswith(b"{\\rtf"):
        raise UnreadableDocument(document_name, "corrupt RTF: no RTF header", ReasonCode.CORRUPT_DOCUMENT)
    return rtf_to_text(data.decode("cp1252", "replace"), errors="replace")
