"""Unit tests for ingest_pipeline.core.formats: the business formats, read from files made by real tools
(pandoc, LibreOffice, Python's email package: fixtures/formats/make_fixtures.sh), chunked with the bundled
model's tokenizer, with their pages and sections; and the format decided by content."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ingest_pipeline.core.chunking import Chunk, Chunker
from ingest_pipeline.core.embedding import bundled_model_path
from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument, extract_text
from ingest_pipeline.core.formats import detect, detect_format

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
SAMPLE_CORPUS = Path(__file__).resolve().parents[2] / "ingest_pipeline" / "sample_corpus"
SAMPLE_PDF = SAMPLE_CORPUS / "acme" / "shared-mime-info-spec.pdf"
CONTRACTS = ["contract.docx", "contract-lo.docx", "contract.odt", "contract.epub"]
SLIDES = ["slides.pptx", "slides.odp"]
SHEETS = ["pricing.xlsx", "pricing.ods"]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(bundled_model_path() / "tokenizer.json")


@pytest.fixture(scope="module")
def small_chunker() -> Chunker:
    """Chunks of a sentence or two, so that each fact of the short fixtures lands in a chunk of its own."""
    return Chunker(bundled_model_path() / "tokenizer.json", max_tokens=40, overlap_tokens=0)


def chunks_of(name: str, chunker: Chunker) -> list[Chunk]:
    return chunker.split_extracted(extract_text(name, (FIXTURES / name).read_bytes()))


def chunk_with(chunks: list[Chunk], fact: str) -> Chunk:
    return next(chunk for chunk in chunks if fact in chunk.text)


FACTS = ["Ottilie Brennan", "SA-7731", "38 months", "48,250 euros", "2.75 percent", "Lighthouse routing algorithm",
         "90 days notice", "Rotterdam"]


@pytest.mark.parametrize("name", [*CONTRACTS, "contract.rtf", *SLIDES])
def test_every_fact_of_the_contract_is_in_the_chunks(name, chunker):
    text = " ".join(" ".join(chunk.text.split()) for chunk in chunks_of(name, chunker))
    for fact in FACTS:
        assert fact in text, (name, fact)


@pytest.mark.parametrize("name", CONTRACTS)
def test_a_documents_facts_carry_their_heading_path(name, small_chunker):
    chunks = chunks_of(name, small_chunker)
    assert extract_text(name, (FIXTURES / name).read_bytes()).format == Path(name).suffix[1:]
    assert chunk_with(chunks, "Ottilie Brennan").section.endswith("Parties")
    assert chunk_with(chunks, "38 months").section.endswith("Terms > Duration")
    assert chunk_with(chunks, "48,250 euros").section.endswith("Terms > Payment")
    assert chunk_with(chunks, "Lighthouse").section.endswith("Confidentiality")
    assert chunk_with(chunks, "Rotterdam").section.endswith("Termination")
    assert all(chunk.page is None for chunk in chunks)


@pytest.mark.parametrize("name", SLIDES)
def test_a_slides_facts_carry_its_number_and_title(name, small_chunker):
    extracted = extract_text(name, (FIXTURES / name).read_bytes())
    assert [page.label for page in extracted.pages] == ["1", "2", "3", "4", "5"]
    chunks = small_chunker.split_extracted(extracted)
    payment = chunk_with(chunks, "48,250 euros")
    assert (payment.page, payment.section) == ("3", "Terms")
    notice = chunk_with(chunks, "Rotterdam")
    assert (notice.page, notice.section) == ("5", "Termination")
    assert chunk_with(chunks, "Ottilie Brennan").page == "2"


@pytest.mark.parametrize("name", [*SHEETS, "pricing.csv"])
def test_a_spreadsheet_row_keeps_its_column_names_and_its_sheet(name, small_chunker):
    chunks = chunks_of(name, small_chunker)
    row = chunk_with(chunks, "Signe Haraldsen")
    assert "Manager: Signe Haraldsen" in row.text
    assert "Product: Gearbox Delta" in row.text and "Unit price: 112" in row.text and "Region: East" in row.text
    expected_sheet = None if name.endswith(".csv") else "pricing"  # LibreOffice names the sheet after the CSV
    assert all(chunk.page == expected_sheet for chunk in chunks)
    assert "Unit price: 7.25" in chunk_with(chunks, "Tomasz Achebe").text


def test_an_email_keeps_its_headers_first_and_reads_its_docx_attachment(chunker, small_chunker):
    extracted = extract_text("message.eml", (FIXTURES / "message.eml").read_bytes())
    assert extracted.format == "eml"
    assert extracted.text.startswith("Subject: Signed agreement SA-7731\nFrom: Ottilie Brennan <ottilie@acme.example>"
                                     "\nTo: Henrik Vasquez <henrik@globex.example>\nDate: Sat, 14 Mar 2026 09:30:00")
    first = chunker.split_extracted(extracted)[0]
    assert "Subject: Signed agreement SA-7731" in first.text and "Harwich" in first.text
    chunks = small_chunker.split_extracted(extracted)
    assert chunk_with(chunks, "Harwich").section is None  # the body, before any attachment
    assert chunk_with(chunks, "48,250 euros").section == "Attachment: contract.docx > Terms > Payment"
    assert chunk_with(chunks, "Lighthouse").section == "Attachment: contract.docx > Confidentiality"


def test_rtf_text_has_no_control_words(chunker):
    text = extract_text("contract.rtf", (FIXTURES / "contract.rtf").read_bytes()).text
    assert "\\par" not in text and "{\\" not in text and "Globex pays an annual fee" in text


# --- the format by content -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "renamed", "fmt"),
    [
        ("contract.docx", "contract.pdf", "docx"),
        ("contract.docx", "notes.txt", "docx"),
        ("contract.odt", "contract.docx", "odt"),
        ("slides.pptx", "deck", "pptx"),
        ("pricing.xlsx", "pricing.csv", "xlsx"),
        ("contract.epub", "book.zip", "epub"),
        ("contract.rtf", "contract.txt", "rtf"),
        ("message.eml", "message", "eml"),
    ],
)
def test_the_format_is_decided_by_content_whatever_the_name(fixture, renamed, fmt, chunker):
    data = (FIXTURES / fixture).read_bytes()
    assert detect_format(renamed, data) == fmt
    extracted = extract_text(renamed, data)
    assert extracted.format == fmt
    assert extracted == extract_text(fixture, data)


def test_every_format_detected_is_a_known_document_format():
    named = {*detect.SUFFIX_FORMATS.values(), *(fmt for _, fmt in detect._OOXML_PARTS), *detect._MIMETYPES.values(),
             "pdf", "rtf", "eml"}
    assert named == set(detect.DETECTED_FORMATS)
    assert set(detect.DOCUMENT_FORMATS) - named == {"image"}


def test_a_docx_that_is_really_a_pdf_is_read_as_a_pdf():
    data = SAMPLE_PDF.read_bytes()
    extracted = extract_text("report.docx", data)
    assert extracted.format == "pdf" and extracted == extract_text(SAMPLE_PDF.name, data)
    assert len(extracted.pages) > 1


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        pytest.param("random.pdf", bytes(range(256)) * 16, ReasonCode.CORRUPT_PDF, id="pdf-of-random-bytes"),
        pytest.param("report.docx", b"CONFIDENTIAL plain words", ReasonCode.CORRUPT_DOCUMENT, id="docx-not-a-zip"),
        pytest.param("book.epub", b"CONFIDENTIAL plain words", ReasonCode.CORRUPT_DOCUMENT, id="epub-not-a-zip"),
        pytest.param("letter.rtf", b"CONFIDENTIAL plain words", ReasonCode.CORRUPT_DOCUMENT, id="rtf-no-header"),
        pytest.param("scan.png", b"\x89PNG\r\n\x1a\nCONFIDENTIAL", ReasonCode.UNSUPPORTED_FORMAT, id="image"),
        pytest.param("scan.txt", b"\xff\xd8\xff\xe0\x00CONFIDENTIAL", ReasonCode.BINARY, id="jpeg-as-txt"),
        pytest.param("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + b"CONFIDENTIAL",
                     ReasonCode.UNSUPPORTED_FORMAT, id="legacy-ole2"),
        pytest.param("archive.zip", b"", ReasonCode.UNSUPPORTED_FORMAT, id="zip-name-no-bytes"),
    ],
)
def test_what_the_content_contradicts_is_refused_with_a_code(name, data, code):
    with pytest.raises(UnreadableDocument) as info:
        extract_text(name, data)
    assert info.value.code == code
    assert "CONFIDENTIAL" not in str(info.value)


def test_a_zip_archive_that_is_no_document_is_unsupported():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "CONFIDENTIAL")
    with pytest.raises(UnreadableDocument) as info:
        extract_text("bundle.zip", buffer.getvalue())
    assert info.value.code == ReasonCode.UNSUPPORTED_FORMAT


def test_an_email_is_recognised_by_its_headers_only_where_the_name_says_nothing():
    message = b"From: a@example.com\nTo: b@example.com\nSubject: Budget\n\nThe budget is 12 million.\n"
    assert detect_format("forwarded", message) == "eml"
    assert detect_format("notes.txt", message) == "text"  # a known extension keeps today's reading
    assert detect_format("notes", b"Dear all: hello\n\nbody\n") is None


# --- smaller cases: e-mail bodies and attachments, tables, delimiters ----------------------------------------


def _message(html: str | None = None, attachment: tuple[str, bytes] | None = None) -> bytes:
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"], message["From"], message["Date"] = "Board minutes", "clerk@example.com", "Mon, 2 Mar 2026"
    if html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content("The board met on Monday.\n# not a heading, a line of the body\n")
    if attachment is not None:
        message.add_attachment(attachment[1], maintype="application", subtype="octet-stream",
                               filename=attachment[0])
    return bytes(message)


def test_an_html_only_email_is_read_as_text_with_its_headings_below_the_header_block():
    data = _message(html="<html><body><h1>Budget</h1><p>Approved: 4.2 million.</p><script>x()</script></body></html>")
    extracted = extract_text("minutes.eml", data)
    assert extracted.text.startswith("Subject: Board minutes\nFrom: clerk@example.com")
    assert "## Budget" in extracted.text and "Approved: 4.2 million." in extracted.text and "x()" not in extracted.text
    assert [section.label for section in extracted.sections] == ["Budget"]


def test_a_plain_body_line_starting_with_a_hash_is_no_heading():
    extracted = extract_text("minutes.eml", _message())
    assert extracted.sections == () and "# not a heading" in extracted.text


def test_an_attachment_that_cannot_be_read_is_named_with_its_code_and_the_message_still_read():
    extracted = extract_text("minutes.eml", _message(attachment=("scan.docx", b"PK\x03\x04 CONFIDENTIAL")))
    assert "The board met on Monday." in extracted.text
    assert "# Attachment: scan.docx\n\n(attachment not read: corrupt-document)" in extracted.text
    assert "CONFIDENTIAL" not in extracted.text


def test_a_docx_table_is_read_row_by_row_under_its_header():
    from ingest_pipeline_tests.hostile_files import docx

    def row(*cells):
        return "<w:tr>" + "".join(f"<w:tc><w:p><w:r><w:t>{cell}</w:t></w:r></w:p></w:tc>" for cell in cells) + "</w:tr>"

    text = extract_text("prices.docx", docx(f"<w:tbl>{row('Item', 'Price')}{row('Anvil', '120')}"
                                            f"{row('Rope', '8')}</w:tbl>")).text
    assert text == "Item: Anvil\nPrice: 120\n\nItem: Rope\nPrice: 8"


def test_a_semicolon_csv_keeps_its_columns():
    text = extract_text("stock.csv", b"Item;Count\nBolts;40\nNuts;25\n").text
    assert text == "Item: Bolts\nCount: 40\n\nItem: Nuts\nCount: 25"


def test_a_csv_cell_with_doubled_quotes_and_commas_stays_one_cell():
    # As Excel, LibreOffice and Python's csv write it; the standard library's sniffer takes it for a dialect
    # without doubled quotes, which split the cell at its commas.
    data = b'article,text\nNormans,"Norse (""Norman"" is ""Norseman"") raiders from Denmark, Iceland and Norway"\n'
    text = extract_text("articles.csv", data).text
    assert text == 'article: Normans\ntext: Norse ("Norman" is "Norseman") raiders from Denmark, Iceland and Norway'


def test_a_row_too_long_for_a_chunk_keeps_its_short_columns_with_its_text(chunker):
    # Cut at lines, such a row left "article: Normans / part: 2" as a chunk of its own, matching any question
    # about the Normans and cut off from the text it labels.
    passage = " ".join(f"Sentence {n} tells how the duchy grew in the year {900 + n}." for n in range(60))
    data = f"article,part,text\nNormans,2,{passage}\n".encode()
    chunks = chunker.split_extracted(extract_text("articles.csv", data))
    assert len(chunks) > 1
    assert chunks[0].text.startswith("article: Normans | part: 2 | text: Sentence 0 tells")
    assert all("Sentence" in chunk.text for chunk in chunks)
