"""Unit tests for ingest_pipeline.core.ocr: scanned PDFs and images read by Debian's tesseract, PDF pages with a
text layer left alone, the language and on/off settings, and the OCR bounds, against fixtures made by real tools
(`fixtures/ocr/make_fixtures.sh`) and hostile images, directly and through the sandboxed worker."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument, extract_text
from ingest_pipeline.core.ocr import INSTALL_HINT, OCR_OFF, OcrSettings, OcrUnavailable, available_languages
from ingest_pipeline.core.sandbox import ExtractionSandbox, OcrUnavailableError, SandboxLimits
from ingest_pipeline_tests.core.test_extraction import PDF_TEXT, make_pdf
from ingest_pipeline_tests.hostile_files import MiB, many_frames_tiff, pixel_bomb_png, truncated_png

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ocr"
OCR_ON = OcrSettings()

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason=f"tesseract is not installed ({INSTALL_HINT}; `make install` does it)")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def mixed_pdf() -> bytes:
    """A PDF whose first page has a text layer and whose second is the scanned (image-only) page."""
    writer = PdfWriter()
    writer.add_page(PdfReader(io.BytesIO(make_pdf())).pages[0])
    writer.add_page(PdfReader(io.BytesIO(fixture("scanned.pdf"))).pages[0])
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def refused(name: str, data: bytes, ocr: OcrSettings = OCR_ON) -> UnreadableDocument:
    with pytest.raises(UnreadableDocument) as info:
        extract_text(name, data, ocr=ocr)
    return info.value


# --- the fixtures are what they claim ------------------------------------------------------------------


def test_fixtures_are_small_and_the_scan_has_no_text_layer():
    for name in ("scanned.pdf", "receipt.png", "two-pages.tif"):
        assert (FIXTURES / name).stat().st_size < 64 * 1024
    assert [page.extract_text().strip() for page in PdfReader(FIXTURES / "scanned.pdf").pages] == [""]


# --- text out of scans and images ----------------------------------------------------------------------


def test_scanned_pdf_is_read_by_ocr():
    extracted = extract_text("letter.pdf", fixture("scanned.pdf"), ocr=OCR_ON)
    assert extracted.format == "pdf" and extracted.pages_ocred == 1
    for word in ("Harbour", "lighthouse", "budget", "4471", "foghorn"):
        assert word in extracted.text


def test_png_is_read_by_ocr():
    extracted = extract_text("receipt.png", fixture("receipt.png"), ocr=OCR_ON)
    assert extracted.format == "image" and extracted.pages_ocred == 1
    assert "violin repair workshop" in extracted.text and "Varnish" in extracted.text


def test_jpeg_is_read_by_ocr():
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(FIXTURES / "receipt.png").save(buffer, "JPEG", quality=70)  # as a camera or scanner writes it
    extracted = extract_text("receipt.jpeg", buffer.getvalue(), ocr=OCR_ON)
    assert extracted.format == "image" and "violin repair workshop" in extracted.text


def test_each_tiff_frame_is_a_page_in_order():
    extracted = extract_text("two-pages.tiff", fixture("two-pages.tif"), ocr=OCR_ON)
    assert extracted.pages_ocred == 2
    first, second = extracted.text.split("\n\n")
    assert "orchard cooperative" in first and "walnuts" in first
    assert "beekeepers" in second and "honey" in second


def test_format_is_decided_by_content_the_extension_is_a_hint():
    as_jpeg = extract_text("receipt.jpg", fixture("receipt.png"), ocr=OCR_ON)  # PNG bytes under a .jpg name
    no_extension = extract_text("scan-0001", fixture("two-pages.tif"), ocr=OCR_ON)
    assert "violin" in as_jpeg.text and "walnuts" in no_extension.text
    assert refused("photo.png", b"not an image at all, just words").code == ReasonCode.CORRUPT_IMAGE


def test_pdf_with_a_text_layer_is_not_ocred_and_reads_as_without_ocr():
    data = make_pdf()
    with_ocr = extract_text("report.pdf", data, ocr=OCR_ON)
    assert with_ocr.pages_ocred == 0
    assert with_ocr == extract_text("report.pdf", data)  # byte for byte the text of before
    assert with_ocr.text == PDF_TEXT


def test_mixed_pdf_ocrs_only_its_image_page():
    extracted = extract_text("mixed.pdf", mixed_pdf(), ocr=OCR_ON)
    assert extracted.pages_ocred == 1
    text_layer, scanned = extracted.text.split("\n\n", 1)
    assert text_layer == PDF_TEXT  # the text layer, untouched
    assert "lighthouse" in scanned and "Harbour" in scanned
    assert extract_text("mixed.pdf", mixed_pdf()).text == PDF_TEXT  # without OCR the scan adds nothing


def test_the_language_setting_reaches_tesseract():
    assert {"eng", "osd"} <= available_languages()
    english = extract_text("receipt.png", fixture("receipt.png"), ocr=OcrSettings(languages="eng"))
    # The orientation-and-script model reads no English words: the text shows which model tesseract ran.
    script_model = extract_text("receipt.png", fixture("receipt.png"), ocr=OcrSettings(languages="osd"))
    assert "violin" in english.text and "violin" not in script_model.text
    both = extract_text("receipt.png", fixture("receipt.png"), ocr=OcrSettings(languages="eng+osd"))
    assert "violin" in both.text


def test_a_language_tesseract_lacks_says_how_to_install_it():
    with pytest.raises(OcrUnavailable) as info:
        extract_text("receipt.png", fixture("receipt.png"), ocr=OcrSettings(languages="eng+zzz"))
    assert "apt-get install tesseract-ocr-zzz" in str(info.value) and "INGEST_OCR_LANGUAGES" in str(info.value)


def test_ocr_off_refuses_as_without_ocr():
    assert refused("letter.pdf", fixture("scanned.pdf"), OCR_OFF).code == ReasonCode.NO_TEXT
    assert refused("receipt.png", fixture("receipt.png"), OCR_OFF).code == ReasonCode.UNSUPPORTED_FORMAT
    assert refused("two-pages.tif", fixture("two-pages.tif"), OCR_OFF).code == ReasonCode.UNSUPPORTED_FORMAT


# --- through the sandboxed worker: results, settings, bounds --------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in ("scanned.pdf", "receipt.png", "two-pages.tif"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    (tmp_path / "mixed.pdf").write_bytes(mixed_pdf())
    (tmp_path / "good.txt").write_text("The quarterly report is ready.\n")
    (tmp_path / "pixel-bomb.png").write_bytes(pixel_bomb_png())
    (tmp_path / "truncated.png").write_bytes(truncated_png())
    (tmp_path / "frames.tif").write_bytes(many_frames_tiff(120))
    return tmp_path


def sandbox_refusal(sandbox: ExtractionSandbox, folder: Path, name: str) -> UnreadableDocument:
    with pytest.raises(UnreadableDocument) as info:
        sandbox.run(folder, name)
    return info.value


def test_the_worker_ocrs_and_counts_the_pages(folder):
    with ExtractionSandbox(SandboxLimits()) as sandbox:
        scan, tiff, mixed = (sandbox.run(folder, name) for name in ("scanned.pdf", "two-pages.tif", "mixed.pdf"))
        text = sandbox.run(folder, "good.txt")
        assert sandbox.workers_started == 1
    assert (scan.pages_ocred, tiff.pages_ocred, mixed.pages_ocred, text.pages_ocred) == (1, 2, 1, 0)
    assert "lighthouse" in scan.text and "honey" in tiff.text and mixed.text.startswith(PDF_TEXT)


def test_the_worker_obeys_ocr_off(folder):
    with ExtractionSandbox(SandboxLimits(ocr=OCR_OFF)) as sandbox:
        assert sandbox_refusal(sandbox, folder, "scanned.pdf").code == ReasonCode.NO_TEXT
        assert sandbox_refusal(sandbox, folder, "receipt.png").code == ReasonCode.UNSUPPORTED_FORMAT
        assert sandbox.run(folder, "mixed.pdf").pages_ocred == 0


def test_without_tesseract_the_document_gets_no_verdict_and_the_error_says_how_to_install(folder):
    missing = OcrSettings(tesseract=str(folder / "no-such-tesseract"))
    with ExtractionSandbox(SandboxLimits(ocr=missing)) as sandbox:
        with pytest.raises(OcrUnavailableError) as info:
            sandbox.run(folder, "receipt.png")
        assert sandbox.run(folder, "good.txt").text  # documents that need no OCR are read as usual
        with pytest.raises(OcrUnavailableError):
            sandbox.run(folder, "mixed.pdf")  # it has a page that needs OCR: no partial verdict either
    assert info.value.code == "ocr-unavailable"
    assert "apt-get install tesseract-ocr tesseract-ocr-eng" in str(info.value)
    assert not isinstance(info.value, UnreadableDocument)  # never quarantined for it


def test_a_pixel_bomb_is_refused_before_it_is_decoded(folder):
    assert (folder / "pixel-bomb.png").stat().st_size < 64 * 1024  # 50,000 x 50,000 pixels declared
    with ExtractionSandbox(SandboxLimits(memory_bytes=512 * MiB)) as sandbox:
        error = sandbox_refusal(sandbox, folder, "pixel-bomb.png")
        assert sandbox.run(folder, "receipt.png").pages_ocred == 1  # the same worker goes on
        assert sandbox.workers_started == 1
    assert error.code == ReasonCode.IMAGE_TOO_LARGE and error.limits is None
    assert sandbox.peak_rss_bytes < 256 * MiB  # 2.5 G pixels were never decoded


def test_a_truncated_image_is_corrupt(folder):
    with ExtractionSandbox(SandboxLimits()) as sandbox:
        error = sandbox_refusal(sandbox, folder, "truncated.png")
    assert error.code == ReasonCode.CORRUPT_IMAGE and error.limits is None


def test_more_frames_than_the_page_cap_are_refused_under_that_limit(folder):
    limits = SandboxLimits(ocr=OcrSettings(max_pages=50))
    with ExtractionSandbox(limits) as sandbox:
        error = sandbox_refusal(sandbox, folder, "frames.tif")
        assert sandbox.run(folder, "two-pages.tif").pages_ocred == 2  # under the cap: read
    assert error.code == ReasonCode.TOO_MANY_PAGES and "50" in error.reason
    assert error.limits == {"ocr_max_pages": 50}  # a run with a larger cap tries it again


def test_a_page_past_the_per_page_time_bound_is_refused_under_that_limit(folder):
    with ExtractionSandbox(SandboxLimits(ocr=OcrSettings(page_timeout_s=0.001))) as sandbox:
        error = sandbox_refusal(sandbox, folder, "scanned.pdf")
        assert sandbox.run(folder, "good.txt").text
    assert error.code == ReasonCode.OCR_TIME_LIMIT
    assert error.limits == {"ocr_page_timeout_s": 0.001}
