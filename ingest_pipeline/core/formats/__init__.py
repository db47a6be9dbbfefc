"""The business formats tenants upload, read into Markdown-like text that keeps their structure for citations.

`detect_format` decides the format by content (magic bytes, container structure), the extension being a hint;
`read_format` reads one of the formats below and returns its text and where its pages start (the headings in
the text give the section paths: `extraction.heading_sections`).

Why these libraries (each permissively licensed, offline, no model weights):

- .docx: python-docx (MIT): paragraphs in body order with their styles (Heading N, Title -> headings), tables
  row by row with their header row.
- .pptx: python-pptx (MIT): one page per slide (numbered from 1), the slide title as a heading, text frames,
  tables and notes.
- .xlsx: openpyxl (MIT) in read-only (streaming) mode: one page and heading per sheet (its name), each row as
  "column: value" lines under its header (a row longer than `markup.LONG_RECORD_CHARS` on one line, so that a
  chunk boundary inside it keeps its short columns with its text), at most `MAX_CELLS` cells.
- .csv: the standard library's csv with the same row layout (the delimiter sniffed, quotes doubled as RFC 4180).
- .odt/.ods/.odp: odfpy (Apache-2.0, one of its three licences): headings by outline level, tables, one page
  per sheet or slide.
- .rtf: striprtf (BSD-3-Clause): plain text (RTF headings are only font sizes, so no sections).
- .epub: zipfile + defusedxml (PSF) for the container and package files, BeautifulSoup for the chapters, in
  spine order, their h1-h6 as headings (EbookLib is AGPL, so not used).
- .eml: the standard library's `email` with `policy.default`: subject, from, to, cc and date as a header block
  at the start, then the text/plain body (or the HTML one as text); attachments in a supported format are read
  as part of the message (a heading "Attachment: name" and their text, their headings one level down).

markitdown (MIT) was tried (NOTES.md): it converts the Office family to Markdown, but reads a whole spreadsheet
into pandas (no cell bound), passes .rtf and .eml through as raw source and refuses .odt; the libraries above
are the ones it wraps, used directly so that each read is bounded and keeps pages.

Safety: every container (OOXML, OpenDocument, EPUB) is inspected with `zipfile` before a parser sees it
(`containers.inspect_zip`): member count, declared sizes and compression ratios (a zip bomb is refused before
it is inflated), then every member is inflated once in blocks, never past its declared size, while XML parts
are scanned for DTDs and entity declarations (billion laughs, external entities: refused as unsafe-document);
member paths with '..' are refused, encrypted members too. The parsers themselves are safe by configuration as
well (lxml with resolve_entities=False in python-docx/-pptx, defusedxml under openpyxl and odfpy). Everything
runs in the sandboxed extraction worker (`core.sandbox`), whose memory, CPU and time limits bound what is left.
"""

from ingest_pipeline.core.formats.detect import DOCUMENT_FORMATS, detect_format
from ingest_pipeline.core.formats.readers import read_format

__all__ = ["DOCUMENT_FORMATS", "detect_format", "read_format"]
