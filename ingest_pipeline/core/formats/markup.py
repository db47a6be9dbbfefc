"""Markdown text built block by block, with where each page starts, and HTML read as such blocks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from bs4 import BeautifulSoup, NavigableString, Tag

from ingest_pipeline.core.extraction import Location

# A line that Markdown would take for a heading, a Setext underline or a fence: escaped in body text.
_MARKUP_LINE = re.compile(r"^(\s*)(#|=+\s*$|-+\s*$|```|~~~)", re.MULTILINE)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = {"p", "li", "pre", "blockquote", "dd", "dt", "figcaption", "caption", "address", "td", "th"}
_SKIPPED = {"script", "style", "noscript", "template", "head", "title", "svg", "math"}
# A table row with more characters than this is written on one line (MarkdownText.record): about 150 word pieces,
# so any row that might not fit in one chunk (254) with the rows around it.
LONG_RECORD_CHARS = 600


def escape_markup(text: str) -> str:
    """Body text whose lines cannot be read as Markdown headings, underlines or fences."""
    return _MARKUP_LINE.sub(lambda match: f"{match.group(1)}\\{match.group(2)}", text)


class MarkdownText:
    """A document's text as Markdown blocks separated by blank lines, and the pages (`Location`s) in it."""

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._length = 0
        self.pages: list[Location] = []

    def _append(self, block: str) -> None:
        if self._blocks:
            self._length += 2
        self._blocks.append(block)
        self._length += len(block)

    def page(self, label: str) -> None:
        """The next block starts a page labelled `label` (a slide number, a sheet name)."""
        self.pages.append(Location(self._length + (2 if self._blocks else 0), label))

    def heading(self, level: int, title: str) -> None:
        title = " ".join(title.split())
        if title:
            self._append(f"{'#' * min(max(level, 1), 6)} {escape_markup(title).lstrip()}")

    def paragraph(self, text: str) -> None:
        text = text.strip()
        if text:
            self._append(escape_markup(text))

    def markdown(self, text: str) -> None:
        """Markdown that is already escaped (an attachment read as Markdown)."""
        if text.strip():
            self._append(text.strip())

    def table(self, rows: Iterable[Sequence[str]]) -> None:
        """A table: its first non-empty row is the header, each later row a block of "column: value" lines."""
        header: list[str] | None = None
        recorded = False
        for row in rows:
            values = [" ".join(str(value).split()) for value in row]
            if not any(values):
                continue
            if header is None:
                header = values
                continue
            recorded = self.record(header, values) or recorded
        if header is not None and not recorded:  # a table of one row: its cells as one line
            self.paragraph(" | ".join(value for value in header if value))

    def record(self, header: Sequence[str], values: Sequence[str]) -> bool:
        """One table row as "column: value" lines (empty values left out), so the row keeps its column names.

        A row longer than LONG_RECORD_CHARS (prose in a cell) is one line instead, its pairs joined by " | ": a
        row too long for one chunk is cut at lines first, which left its short columns ("article: X", "part: 2")
        as a chunk of their own, matching any query about X and cut off from the text they describe; on one line
        it is cut at sentences, and its first chunk starts with them.
        """
        lines = []
        for index, value in enumerate(values):
            if value:
                name = header[index] if index < len(header) and header[index] else f"column {index + 1}"
                lines.append(f"{name}: {value}")
        if lines:
            long = sum(map(len, lines)) > LONG_RECORD_CHARS
            self.paragraph((" | " if long else "\n").join(lines))
        return bool(lines)

    def build(self) -> tuple[str, list[Location]]:
        return "\n\n".join(self._blocks), self.pages


def html_blocks(markup: str | bytes, out: MarkdownText, heading_offset: int = 0) -> None:
    """HTML (an EPUB chapter, an e-mail body) as blocks: h1-h6 as headings, tables row by row, the rest as
    paragraphs. html.parser never loads a DTD or an external entity."""
    soup = BeautifulSoup(markup, "html.parser")
    for element in soup(list(_SKIPPED)):
        element.decompose()
    inline: list[str] = []

    def flush() -> None:
        if inline:
            out.paragraph(" ".join("".join(inline).split()))
            inline.clear()

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a comment, CDATA or doctype
                    inline.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower() if child.name else ""
            if name in _HEADINGS:
                flush()
                out.heading(_HEADINGS[name] + heading_offset, child.get_text(" "))
            elif name == "table":
                flush()
                out.table([cell.get_text(" ") for cell in row.find_all(["td", "th"])] for row in child.find_all("tr"))
            elif name in _BLOCKS:
                flush()
                out.paragraph(" ".join(child.get_text(" ").split()))
            elif name == "br":
                inline.append("\n")
            else:
                if name in {"div", "section", "article", "ul", "ol", "dl", "body", "html", "header", "footer",
                            "main", "nav", "aside", "figure", "hr"}:
                    flush()
                walk(child)

    walk(soup)
    flush()
