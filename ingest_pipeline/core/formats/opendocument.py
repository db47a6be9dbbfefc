"""OpenDocument text, spreadsheets and presentations (.odt, .ods, .odp): content.xml read with defusedxml.

odfpy was tried first: on an XML part it fails to parse (it did on pandoc's styles.xml) it prints the whole part
to standard output, which would put document text in logs. So content.xml is parsed with defusedxml's
ElementTree (no DTD, no entity, no external reference is honoured), and walked here.
"""

from __future__ import annotations

import io
import zipfile

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument
from ingest_pipeline.core.formats.markup import MarkdownText
from ingest_pipeline.core.formats.office import check_cells

MAX_DEPTH = 64
MAX_REPEATED_CELLS = 64  # a cell repeated more often (a sheet padded to its last column) is read this often
_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
_TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
_DRAW = "{urn:oasis:names:tc:opendocument:xmlns:drawing:1.0}"
_OFFICE = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
_PRESENTATION = "{urn:oasis:names:tc:opendocument:xmlns:presentation:1.0}"
_SKIPPED = {f"{_TEXT}tracked-changes", f"{_OFFICE}annotation", f"{_TEXT}sequence-decls", f"{_OFFICE}forms"}


def read_opendocument(document_name: str, data: bytes) -> MarkdownText:
    """Headings (text:h, by outline level), paragraphs and lists, tables row by row under their header; in a
    spreadsheet one page and heading per sheet, in a presentation one page per slide with its title."""
    with zipfile.ZipFile(io.BytesIO(data)) as container:
        manifest = container.read("META-INF/manifest.xml") if "META-INF/manifest.xml" in container.namelist() else b""
        if b"encryption-data" in manifest:  # ODF encrypts members itself, under the manifest's key derivation
            raise UnreadableDocument(document_name, "encrypted OpenDocument (password required)",
                                     ReasonCode.ENCRYPTED_DOCUMENT)
        content = container.read("content.xml")
    try:
        root = ElementTree.fromstring(content)
    except DefusedXmlException:
        raise UnreadableDocument(document_name, "unsafe document: an XML part declares a DTD or entities",
                                 ReasonCode.UNSAFE_DOCUMENT) from None
    except ElementTree.ParseError:
        raise UnreadableDocument(document_name, "corrupt OpenDocument: content.xml does not parse",
                                 ReasonCode.CORRUPT_DOCUMENT) from None
    reader = _Reader(document_name)
    body = root.find(f"{_OFFICE}body")
    if body is not None:
        reader.walk(body, 0, spreadsheet=body.find(f"{_OFFICE}spreadsheet") is not None)
    return reader.out


class _Reader:
    def __init__(self, document_name: str) -> None:
        self.document_name = document_name
        self.out = MarkdownText()
        self.cells = 0
        self.slides = 0

    def walk(self, element, depth: int, spreadsheet: bool = False) -> None:
        if depth > MAX_DEPTH:
            raise RecursionError  # refused as too-deeply-nested
        for child in element:
            tag = child.tag
            if tag in _SKIPPED:
                continue
            if tag == f"{_TEXT}h":
                level = child.get(f"{_TEXT}outline-level", "1")
                self.out.heading(int(level) if level.isdigit() else 1, _text(child))
            elif tag == f"{_TEXT}p":
                self.out.paragraph(_text(child))
            elif tag == f"{_TABLE}table":
                if spreadsheet:
                    sheet = child.get(f"{_TABLE}name", "")
                    self.out.page(sheet)
                    self.out.heading(1, sheet)
                self.out.table(self._rows(child))
            elif tag == f"{_DRAW}page":
                self.slides += 1
                self.out.page(str(self.slides))
                frames = [frame for frame in child if frame.get(f"{_PRESENTATION}class") == "title"]
                title = " ".join(_text(frame) for frame in frames)
                self.out.heading(1, title if title.strip() else f"Slide {self.slides}")
                for frame in child:
                    if frame not in frames:
                        self.walk(frame, depth + 1)
            else:
                self.walk(child, depth + 1, spreadsheet)

    def _rows(self, table):
        for row in table.iter(f"{_TABLE}table-row"):
            values = []
            for cell in row:
                if cell.tag not in (f"{_TABLE}table-cell", f"{_TABLE}covered-table-cell"):
                    continue
                repeat = cell.get(f"{_TABLE}number-columns-repeated", "1")
                count = min(int(repeat), MAX_REPEATED_CELLS) if repeat.isdigit() else 1
                self.cells += count
                check_cells(self.document_name, self.cells)
                values.extend([" ".join(_text(p) for p in cell.iter(f"{_TEXT}p"))] * count)
            yield values


def _text(element) -> str:
    """An element's text as displayed: text:s as spaces, text:tab as a tab, text:line-break as a newline."""
    parts: list[str] = []

    def visit(node, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise RecursionError
        if node.text:
            parts.append(node.text)
        for child in node:
            if child.tag == f"{_TEXT}s":
                count = child.get(f"{_TEXT}c", "1")
                parts.append(" " * min(int(count) if count.isdigit() else 1, 64))
            elif child.tag == f"{_TEXT}tab":
                parts.append("\t")
            elif child.tag == f"{_TEXT}line-break":
                parts.append("\n")
            elif child.tag not in _SKIPPED and child.tag != f"{_TEXT}note":
                visit(child, depth + 1)
            if child.tail:
                parts.append(child.tail)

    visit(element, 0)
    return "".join(parts)
