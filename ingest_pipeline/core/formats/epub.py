"""EPUB e-books: the chapters in spine order, read from the container with zipfile, defusedxml and BeautifulSoup."""

from __future__ import annotations

import posixpath
import zipfile
from urllib.parse import unquote

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument
from ingest_pipeline.core.formats.markup import MarkdownText, html_blocks

_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"
_CHAPTER_TYPES = {"application/xhtml+xml", "text/html"}


def read_epub(document_name: str, container: zipfile.ZipFile) -> MarkdownText:
    """The spine's XHTML chapters in reading order, their h1-h6 as headings. `container` was inspected."""
    out = MarkdownText()
    try:
        root = ElementTree.fromstring(container.read("META-INF/container.xml"))
        rootfile = root.find(f".//{_CONTAINER}rootfile")
        package_path = rootfile.get("full-path") if rootfile is not None else None
        if not package_path:
            raise KeyError("rootfile")
        package = ElementTree.fromstring(container.read(package_path))
    except DefusedXmlException:
        raise UnreadableDocument(document_name, "unsafe document: an EPUB package file declares entities",
                                 ReasonCode.UNSAFE_DOCUMENT) from None
    except (KeyError, ElementTree.ParseError, ValueError):
        raise UnreadableDocument(document_name, "corrupt EPUB: no readable container or package file",
                                 ReasonCode.CORRUPT_DOCUMENT) from None
    folder = posixpath.dirname(package_path)
    manifest = {item.get("id"): item for item in package.iter(f"{_OPF}item")}
    names = set(container.namelist())
    for itemref in package.iter(f"{_OPF}itemref"):
        item = manifest.get(itemref.get("idref"))
        if item is None or item.get("media-type") not in _CHAPTER_TYPES or not item.get("href"):
            continue
        path = posixpath.normpath(posixpath.join(folder, unquote(item.get("href"))))
        if path in names:
            html_blocks(container.read(path), out)
    return out
