"""Unit tests for ingest_pipeline.core.extraction: text from .txt/.md/.html/.pdf and content-free refusals."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from pypdf import PdfReader, PdfWriter

from ingest_pipeline.core.extraction import (
    SUPPORTED_SUFFIXES,
    ExtractedText,
    Location,
    ReasonCode,
    UnreadableDocument,
    extract_text,
    read_document,
)

PDF_TEXT = "Quarterly revenue grew by twelve percent"


def make_pdf(text: str = PDF_TEXT) -> bytes:
    """A minimal, valid one-page PDF 1.4 whose content stream shows `text` with a Tj operator."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_offset = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref_offset}\n%%EOF\n".encode()
    return bytes(out)


def _write(writer: PdfWriter) -> bytes:
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def encrypted_pdf(user_password: str, owner_password: str = "o") -> bytes:
    writer = PdfWriter()
    writer.add_page(PdfReader(io.BytesIO(make_pdf())).pages[0])
    writer.encrypt(user_password=user_password, owner_password=owner_password)
    return _write(writer)


def blank_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    return _write(writer)


def assert_refused(name: str, data: bytes, reason_fragment: str, secret: str | None = None, **kwargs):
    with pytest.raises(UnreadableDocument) as info:
        extract_text(name, data, **kwargs)
    error = info.value
    assert error.document_name == name
    assert reason_fragment in error.reason
    assert str(error) == f"{name}: {error.reason}"
    if secret is not None:
        assert secret not in str(error)
        assert secret not in repr(error)
    return error


# --- the hand-made PDF is genuinely valid ------------------------------------------------------------


def test_hand_made_pdf_is_valid_in_strict_mode():
    reader = PdfReader(io.BytesIO(make_pdf()), strict=True)
    assert len(reader.pages) == 1
    assert PDF_TEXT in reader.pages[0].extract_text()


# --- plain text and markdown -------------------------------------------------------------------------


def test_txt_utf8():
    text = "Grüße aus Zürich — 東京 😀\nSecond line."
    result = extract_text("notes.txt", text.encode("utf-8"))
    assert result == ExtractedText(text=text, format="text")


def test_txt_utf8_with_bom_drops_the_bom():
    result = extract_text("notes.txt", "\ufeffHello BOM".encode())
    assert result.text == "Hello BOM"


def test_txt_cp1252():
    text = (
        "Le rapport annuel présente les résultats financiers de l'entreprise. "
        "Les dépenses ont été réduites et la qualité du service s'est améliorée."
    )
    data = text.encode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # so the fallback path is exercised
    result = extract_text("rapport.txt", data)
    assert result == ExtractedText(text=text, format="text")


def test_txt_latin1_german():
    text = "Die Größe der Bäume überrascht. Zürich Straße Grüße für Müller."
    assert extract_text("brief.txt", text.encode("latin-1")).text == text


@pytest.mark.parametrize(
    "text",
    [
        "Le café est très bon à Noël, garçon.",
        "Señor Muñoz paid 50 € for the piñata.",
        "Café crème, naïve façade — “quoted” résumé.",
    ],
)
def test_txt_short_cp1252_is_decoded_correctly(text):
    assert extract_text("short.txt", text.encode("cp1252")).text == text


@pytest.mark.parametrize("suffix", [".txt", ".text", ".TXT"])
def test_text_suffixes(suffix):
    assert extract_text(f"a{suffix}", b"plain words").format == "text"


@pytest.mark.parametrize("suffix", [".md", ".markdown", ".MD"])
def test_markdown(suffix):
    source = "# Title\n\nSome *emphasis* and a [link](http://example.com).\n\n- item one\n- item two\n"
    result = extract_text(f"readme{suffix}", source.encode())
    assert result.format == "markdown"
    assert result.text == source.strip()  # markdown is kept as markdown for the heading-aware chunker


def test_whitespace_is_normalised():
    data = b"  first line   \r\nsecond\t\n\n\n\n\nthird  \n\n"
    assert extract_text("a.txt", data).text == "first line\nsecond\n\nthird"


# --- html --------------------------------------------------------------------------------------------


def test_html_drops_script_style_and_head_keeps_body_text():
    markup = b"""<!doctype html>
<html><head><title>Page title</title><style>body { color: red }</style>
<script>var leaked = "HEADSCRIPT";</script></head>
<body>
  <h1>Welcome</h1>
  <script>alert("BODYSCRIPT")</script>
  <p>Body paragraph with <b>bold</b> text.</p>
  <style>.x { display: none }</style>
  <noscript>NOSCRIPT fallback</noscript>
  <ul><li>First item</li><li>Second item</li></ul>
</body></html>"""
    result = extract_text("page.html", markup)
    assert result.format == "html"
    for kept in ("Welcome", "Body paragraph with", "bold", "First item", "Second item"):
        assert kept in result.text
    for dropped in ("HEADSCRIPT", "BODYSCRIPT", "alert", "color: red", "display: none", "NOSCRIPT", "<p>", "<h1>"):
        assert dropped not in result.text


def test_htm_suffix_and_entities():
    result = extract_text("page.htm", b"<p>Fish &amp; chips &lt;3 caf&eacute;</p>")
    assert result == ExtractedText(text="Fish & chips <3 café", format="html")


def test_html_with_only_script_has_no_text():
    assert_refused(
        "x.html",
        b"<html><body><script>var SECRETVALUE = 1;</script></body></html>",
        "no extractable text",
        secret="SECRETVALUE",
    )


# --- pdf ---------------------------------------------------------------------------------------------


def test_pdf_text_is_extracted():
    result = extract_text("report.pdf", make_pdf())
    assert result == ExtractedText(text=PDF_TEXT, format="pdf", pages=(Location(0, "1"),))


def test_pdf_suffix_is_case_insensitive():
    assert extract_text("REPORT.PDF", make_pdf()).text == PDF_TEXT


def test_owner_password_only_pdf_is_readable():
    # Empty user password: the document opens without a password, so it must not be refused.
    assert extract_text("open.pdf", encrypted_pdf(user_password="")).text == PDF_TEXT


# --- hostile inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.txt", "empty.md", "empty.html", "empty.pdf"])
def test_empty_file(name):
    assert_refused(name, b"", "empty document")


@pytest.mark.parametrize("data", [b"   ", b"\n\n\t \r\n", b"\x0b\x0c "])
def test_whitespace_only(data):
    assert_refused("blank.txt", data, "empty document")


def test_binary_bytes_in_txt():
    data = b"CONFIDENTIAL-PAYLOAD\x00\x01\x02\xff\xfe binary"
    error = assert_refused("data.txt", data, "NUL", secret="CONFIDENTIAL-PAYLOAD")
    assert "binary" in error.reason


def test_binary_bytes_in_html():
    assert_refused("page.html", b"<p>CONFIDENTIAL</p>\x00\x00", "NUL", secret="CONFIDENTIAL")


@pytest.mark.parametrize("name", ["report.doc", "image.png", "archive.tar.gz", "no_extension", "script.py"])
def test_unsupported_extension(name):
    error = assert_refused(name, b"CONFIDENTIAL content", "unsupported format", secret="CONFIDENTIAL")
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in error.reason  # tells the user what is accepted


def test_unsupported_extension_names_the_suffix():
    assert ".key" in assert_refused("slides.key", b"PK\x03\x04", "unsupported").reason
    assert "(no extension)" in assert_refused("README", b"hello", "unsupported").reason


def test_too_large():
    data = b"CONFIDENTIAL " * 10
    error = assert_refused("big.txt", data, "too large", secret="CONFIDENTIAL", max_bytes=50)
    assert str(len(data)) in error.reason
    assert "50" in error.reason


def test_exactly_max_bytes_is_accepted():
    assert extract_text("ok.txt", b"x" * 50, max_bytes=50).text == "x" * 50


def test_too_large_is_checked_before_parsing():
    # A huge "PDF" of garbage is refused for its size, not parsed.
    assert_refused("big.pdf", b"%PDF-" + b"\x00" * 200, "too large", max_bytes=100)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(make_pdf()[: len(make_pdf()) // 2], id="truncated-half"),
        pytest.param(make_pdf()[:60], id="truncated-header"),
        pytest.param(b"%PDF-1.4\n" + bytes(range(256)) * 4, id="garbage-after-header"),
        pytest.param(b"%PDF-1.7\nCONFIDENTIAL garbage that is not a pdf body", id="text-after-header"),
    ],
)
def test_corrupt_pdf(data):
    error = assert_refused("broken.pdf", data, "corrupt PDF", secret="CONFIDENTIAL")
    assert PDF_TEXT not in str(error)


def test_pdf_without_header():
    assert_refused(
        "fake.pdf", b"CONFIDENTIAL plain text pretending to be a pdf", "no PDF header", secret="CONFIDENTIAL"
    )


def test_encrypted_pdf():
    data = encrypted_pdf(user_password="secret")
    assert PdfReader(io.BytesIO(data)).is_encrypted
    error = assert_refused("locked.pdf", data, "encrypted PDF", secret=PDF_TEXT)
    assert "secret" not in str(error)  # the password is never echoed either


def test_pdf_with_no_text():
    assert_refused("scan.pdf", blank_pdf(), "no extractable text in PDF")


def test_unreadable_document_is_a_value_error():
    assert issubclass(UnreadableDocument, ValueError)


# --- reason codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        pytest.param("empty.txt", b"", ReasonCode.EMPTY, id="empty"),
        pytest.param("blank.md", b" \n\t ", ReasonCode.EMPTY, id="whitespace"),
        pytest.param("data.txt", b"CONFIDENTIAL\x00\x01binary", ReasonCode.BINARY, id="nul-bytes"),
        pytest.param("late.txt", b"CONFIDENTIAL text " * 1000 + b"\x00", ReasonCode.BINARY, id="nul-after-8k"),
        pytest.param("ctl.txt", b"CONFIDENTIAL\x01\x02\x03\x04\x05\x06\x07\x08" * 50, ReasonCode.BINARY,
                     id="control-characters"),
        pytest.param("slides.key", b"PK\x03\x04 CONFIDENTIAL", ReasonCode.UNSUPPORTED_FORMAT, id="unsupported"),
        pytest.param("slides.docx", b"PK\x03\x04 CONFIDENTIAL", ReasonCode.CORRUPT_DOCUMENT, id="truncated-zip"),
        pytest.param("fake.pdf", b"CONFIDENTIAL not a pdf", ReasonCode.CORRUPT_PDF, id="no-pdf-header"),
        pytest.param("broken.pdf", b"%PDF-1.7\nCONFIDENTIAL garbage", ReasonCode.CORRUPT_PDF, id="corrupt-pdf"),
        pytest.param("x.html", b"<script>var CONFIDENTIAL = 1;</script>", ReasonCode.NO_TEXT, id="no-text"),
    ],
)
def test_every_refusal_has_a_stable_code(name, data, code):
    error = assert_refused(name, data, "", secret="CONFIDENTIAL")
    assert error.code == code
    assert error.code.value == str(code)


def test_codes_of_pdf_refusals():
    assert assert_refused("locked.pdf", encrypted_pdf("pw"), "encrypted").code == ReasonCode.ENCRYPTED_PDF
    assert assert_refused("scan.pdf", blank_pdf(), "no extractable").code == ReasonCode.NO_TEXT
    assert assert_refused("big.txt", b"x" * 100, "too large", max_bytes=10).code == ReasonCode.TOO_LARGE


def test_pdf_decompression_bomb_is_refused_by_the_parser_limit():
    from ingest_pipeline_tests.hostile_files import bomb_pdf

    error = assert_refused("bomb.pdf", bomb_pdf(1024 * 2**20), "decompression bomb")
    assert error.code == ReasonCode.DECOMPRESSION_LIMIT


# --- invalid and legacy encodings --------------------------------------------------------------------


def _random_bytes(size: int, seed: int) -> bytes:
    import random

    generator = random.Random(seed)
    return bytes(generator.randrange(1, 256) for _ in range(size))  # no NUL: not caught as binary by that


@pytest.mark.parametrize("size", [24, 300, 5000, 50_000])
def test_random_bytes_are_invalid_encoding(size):
    error = assert_refused("noise.txt", _random_bytes(size, size), "no other character encoding fits")
    assert error.code == ReasonCode.INVALID_ENCODING


def test_truncated_multibyte_sequences_in_binary_data_are_invalid_encoding():
    data = (b"\xe6\x97\xa5\xe6\x97" + _random_bytes(40, 1)) * 200  # cut UTF-8 sequences among noise
    assert assert_refused("cut.md", data, "not UTF-8").code == ReasonCode.INVALID_ENCODING


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Годовой отчёт представляет финансовые результаты компании за прошлый год. " * 40, "cp1251"),
        ("日本語のテキストです。これは文字コードのテストです。" * 100, "shift_jis"),
        ("Le rapport annuel présente les résultats financiers de l'entreprise. " * 40, "cp1252"),
    ],
)
def test_legacy_encodings_detected_with_confidence_are_accepted(text, encoding):
    data = text.encode(encoding)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert extract_text("legacy.txt", data).text == text.strip()


# --- parsers under stress ----------------------------------------------------------------------------


def test_deeply_nested_html_is_extracted_or_refused_as_too_deeply_nested():
    depth = 100_000
    markup = b"<div>" * depth + b"deep text" + b"</div>" * depth
    try:
        result = extract_text("deep.html", markup)
    except UnreadableDocument as error:
        assert error.code == ReasonCode.TOO_DEEPLY_NESTED
    else:
        assert result.text == "deep text"


# --- read_document -----------------------------------------------------------------------------------


def test_read_document_reads_a_regular_file_and_hashes_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"hello")
    data, digest = read_document(tmp_path, "sub/a.txt")
    assert data == b"hello" and digest == hashlib.sha256(b"hello").hexdigest()


def test_read_document_refuses_links_special_files_and_large_files(tmp_path):
    (tmp_path / "outside.txt").write_text("CONFIDENTIAL outside")
    (tmp_path / "zone").mkdir()
    (tmp_path / "zone" / "link.txt").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "zone" / "dir").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(tmp_path / "zone" / "pipe.txt")
    (tmp_path / "zone" / "big.txt").write_bytes(b"x" * 100)
    for name, code in [("link.txt", ReasonCode.SYMLINK), ("dir/outside.txt", ReasonCode.SYMLINK),
                       ("pipe.txt", ReasonCode.SPECIAL_FILE), ("big.txt", ReasonCode.TOO_LARGE),
                       ("../outside.txt", ReasonCode.BAD_NAME)]:
        with pytest.raises(UnreadableDocument) as info:
            read_document(tmp_path / "zone", name, max_bytes=50)
        assert info.value.code == code, name
        assert "CONFIDENTIAL" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_document(tmp_path / "zone", "gone.txt")


def test_whitespace_normalisation_moves_page_offsets_with_the_text():
    """PDF page markers survive the normalisation: each lands where its page's first word is, in the very text
    that normalising without markers gives."""
    import random

    from ingest_pipeline.core.extraction import _normalise_whitespace

    rng = random.Random(7)
    noise = ["", " ", "\n", "\n\n\n", " \t\n", "\r\n", "\x00", "\n \n\n"]
    for _ in range(200):
        pages = [rng.choice(noise) + (f"word{n} text " * rng.randint(0, 3)).strip() + rng.choice(noise)
                 for n in range(rng.randint(1, 6))]
        joined = "\n\n".join(pages)
        offsets = [sum(len(page) + 2 for page in pages[:n]) for n in range(len(pages))]
        text, moved = _normalise_whitespace(joined, offsets)
        assert (text, []) == _normalise_whitespace(joined)
        assert moved == sorted(moved) and all(0 <= offset <= len(text) for offset in moved)
        for page, offset in zip(pages, moved, strict=True):
            if page.split():
                assert text[offset:].lstrip().startswith(page.split()[0].replace("\x00", ""))
