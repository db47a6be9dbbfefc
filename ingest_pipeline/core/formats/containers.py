"""ZIP containers (OOXML, OpenDocument, EPUB) inspected before any parser reads them."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import PurePosixPath

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument

MAX_MEMBERS = 10_000
# The sum of the members' declared (inflated) sizes; a document needs far less, a bomb far more.
MAX_INFLATED_BYTES = 256 * 2**20
# Inflated/compressed, for members past RATIO_CHECKED_FROM bytes inflated: XML compresses 10 to 100 times.
MAX_COMPRESSION_RATIO = 500
RATIO_CHECKED_FROM = 2**20
_BLOCK = 2**20
_DTD = b"<!DOCTYPE"
_ENTITY = b"<!ENTITY"


def _encodings(marker: bytes) -> tuple[bytes, ...]:
    text = marker.decode()
    return marker, text.encode("utf-16-le"), text.encode("utf-16-be")


def open_zip(document_name: str, data: bytes) -> zipfile.ZipFile:
    """The container as a ZipFile, or a corrupt-document refusal (truncated, not a ZIP)."""
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise UnreadableDocument(document_name, "corrupt document: not a readable ZIP container (truncated?)",
                                 ReasonCode.CORRUPT_DOCUMENT) from None


def inspect_zip(document_name: str, data: bytes, forbid_dtd: bool = True) -> zipfile.ZipFile:
    """The container, once it is known safe to hand to a parser; else an UnreadableDocument.

    Refused: too many members (content-limit); declared sizes past MAX_INFLATED_BYTES in all, or a member that
    inflates MAX_COMPRESSION_RATIO times or more, or past its declared size (decompression-limit, checked on the
    declared sizes before anything is inflated); a member path with '..', an absolute one or a drive letter
    (unsafe-document); an encrypted member (encrypted-document); an XML part holding an entity declaration, or
    (with `forbid_dtd`: Office and OpenDocument parts never have one) a DTD (unsafe-document); a member that
    does not inflate (corrupt-document).
    """
    container = open_zip(document_name, data)
    members = container.infolist()
    if len(members) > MAX_MEMBERS:
        raise UnreadableDocument(document_name, f"a container of more than {MAX_MEMBERS} members",
                                 ReasonCode.CONTENT_LIMIT)
    declared = 0
    for member in members:
        path = PurePosixPath(member.filename.replace("\\", "/"))
        if ".." in path.parts or path.is_absolute() or (path.parts and ":" in path.parts[0]):
            raise UnreadableDocument(document_name, "unsafe container: a member path leaves the container",
                                     ReasonCode.UNSAFE_DOCUMENT)
        if member.flag_bits & 0x1:
            raise UnreadableDocument(document_name, "encrypted container member (password required)",
                                     ReasonCode.ENCRYPTED_DOCUMENT)
        declared += member.file_size
        ratio_ok = member.file_size < RATIO_CHECKED_FROM or (
            member.compress_size > 0 and member.file_size / member.compress_size < MAX_COMPRESSION_RATIO)
        if declared > MAX_INFLATED_BYTES or not ratio_ok:
            raise UnreadableDocument(
                document_name, "container members inflate beyond the limits (a zip bomb?); refused before inflating",
                ReasonCode.DECOMPRESSION_LIMIT)
    forbidden = _encodings(_ENTITY) + (_encodings(_DTD) if forbid_dtd else ())
    for member in members:
        if not member.is_dir():
            _scan_member(document_name, container, member, forbidden if not member.filename.lower().endswith(
                ".svg") else _encodings(_ENTITY))
    return container


def _scan_member(document_name: str, container: zipfile.ZipFile, member: zipfile.ZipInfo,
                 forbidden: tuple[bytes, ...]) -> None:
    """Inflate one member in blocks, never past its declared size, scanning an XML one for forbidden markers."""
    overlap = max(len(marker) for marker in forbidden) - 1
    inflated = 0
    tail = b""
    xml = None
    try:
        with container.open(member) as stream:
            while block := stream.read(_BLOCK):
                inflated += len(block)
                if inflated > member.file_size:
                    raise UnreadableDocument(
                        document_name, "a container member inflates past its declared size (a zip bomb?)",
                        ReasonCode.DECOMPRESSION_LIMIT)
                if xml is None:
                    xml = block.lstrip(b"\xef\xbb\xbf\xff\xfe \t\r\n\x00")[:1] == b"<"
                if xml:
                    window = tail + block
                    if any(marker in window for marker in forbidden):
                        raise UnreadableDocument(
                            document_name, "unsafe document: an XML part declares a DTD or entities "
                            "(entity expansion or external entities)", ReasonCode.UNSAFE_DOCUMENT)
                    tail = window[-overlap:]
    except UnreadableDocument:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, ValueError, OSError,
            EOFError) as exc:
        # zipfile's messages can name members, never content; still, only the type is kept.
        raise UnreadableDocument(document_name, f"corrupt document: a container member does not inflate "
                                 f"({type(exc).__name__})", ReasonCode.CORRUPT_DOCUMENT) from None
    except RuntimeError:  # zipfile: "File ... is encrypted, password required"
        raise UnreadableDocument(document_name, "encrypted container member (password required)",
                                 ReasonCode.ENCRYPTED_DOCUMENT) from None
