"""Office Open XML (.docx, .pptx, .xlsx) and .csv, read with python-docx, python-pptx, openpyxl and csv."""

from __future__ import annotations

import csv
import datetime
import io

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument, decode_text
from ingest_pipeline.core.formats.markup import MarkdownText

# Cells read from one spreadsheet (empty ones included): more is refused as content-limit, never read unbounded.
MAX_CELLS = 250_000
MAX_GROUP_DEPTH = 16


def read_docx(document_name: str, data: bytes) -> MarkdownText:
    """Paragraphs and tables in body order; Title and Heading N paragraphs become headings."""
    import docx
    from docx.table import Table

    out = MarkdownText()
    for block in docx.Document(io.BytesIO(data)).iter_inner_content():
        if isinstance(block, Table):
            out.table([cell.text for cell in row.cells] for row in block.rows)
            continue
        level = _heading_level(block.style.name if block.style is not None else "")
        if level:
            out.heading(level, block.text)
        else:
            out.paragraph(block.text)
    return out


def _heading_level(style_name: str) -> int:
    name = (style_name or "").strip().lower()
    if name == "title":
        return 1
    if name.startswith("heading "):
        level = name.removeprefix("heading ").strip()
        return int(level) if level.isdigit() and 1 <= int(level) <= 6 else 0
    return 0


def read_pptx(document_name: str, data: bytes) -> MarkdownText:
    """One page per slide (numbered from 1): its title as a heading, then its text frames, tables and notes."""
    import pptx

    out = MarkdownText()
    for number, slide in enumerate(pptx.Presentation(io.BytesIO(data)).slides, start=1):
        out.page(str(number))
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text if title_shape is not None and title_shape.has_text_frame else ""
        out.heading(1, title if title.strip() else f"Slide {number}")
        title_id = title_shape.shape_id if title_shape is not None else None
        for shape in _shapes(slide.shapes, 0):
            if shape.shape_id == title_id:
                continue
            if shape.has_text_frame:
                out.paragraph(shape.text_frame.text)
            if shape.has_table:
                out.table([cell.text for cell in row.cells] for row in shape.table.rows)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text
            if notes.strip():
                out.paragraph(f"Notes: {notes}")
    return out


def _shapes(shapes, depth: int):
    """The slide's shapes, those inside groups too (to MAX_GROUP_DEPTH)."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            if depth < MAX_GROUP_DEPTH:
                yield from _shapes(shape.shapes, depth + 1)
        else:
            yield shape


def read_xlsx(document_name: str, data: bytes) -> MarkdownText:
    """One page and heading per worksheet (its name); each row as "column: value" lines under the sheet's first
    non-empty row (its header). Values as last computed (data_only); at most MAX_CELLS cells."""
    import openpyxl

    out = MarkdownText()
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    cells = 0
    try:
        for sheet in workbook.worksheets:
            out.page(sheet.title)
            out.heading(1, sheet.title)
            rows = []
            for row in sheet.iter_rows(values_only=True):
                cells += len(row)
                check_cells(document_name, cells)
                rows.append([_cell_text(value) for value in row])
            out.table(rows)
    finally:
        workbook.close()
    return out


def read_csv(document_name: str, data: bytes) -> MarkdownText:
    """The rows under the first row (the header), each as "column: value" lines; at most MAX_CELLS cells."""
    text = decode_text(document_name, data)
    try:
        sniffed = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        sniffed = csv.excel
    # The sniffer's guess is kept for the delimiter and quote character only. Its `doublequote` is often False on
    # files that escape quotes the RFC 4180 way (Excel, LibreOffice, Python's csv), and then a `""` inside a quoted
    # field ends it: the rest of the cell is split at its commas into columns of its own.
    dialect = _Dialect(sniffed.delimiter, sniffed.quotechar or '"', sniffed.skipinitialspace)
    out = MarkdownText()
    rows, cells = [], 0
    try:
        for row in csv.reader(io.StringIO(text, newline=""), dialect):
            cells += len(row)
            check_cells(document_name, cells)
            rows.append(row)
    except csv.Error:
        raise UnreadableDocument(document_name, "corrupt CSV (a field past the parser's limit, or a NUL)",
                                 ReasonCode.CORRUPT_DOCUMENT) from None
    out.table(rows)
    return out


class _Dialect(csv.Dialect):
    def __init__(self, delimiter: str, quotechar: str, skipinitialspace: bool) -> None:
        self.delimiter, self.quotechar, self.skipinitialspace = delimiter, quotechar, skipinitialspace
        self.doublequote = True
        self.quoting = csv.QUOTE_MINIMAL
        self.lineterminator = "\r\n"
        super().__init__()


def check_cells(document_name: str, cells: int) -> None:
    if cells > MAX_CELLS:
        raise UnreadableDocument(document_name, f"a spreadsheet of more than {MAX_CELLS} cells",
                                 ReasonCode.CONTENT_LIMIT)


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)
