"""OCR of scanned PDF pages and of images (PNG, JPEG, TIFF and multi-page TIFF) with Debian's tesseract.

Tesseract is run as a program (`tesseract stdin stdout -l LANGS`), one page at a time, with the page's pixels on
its standard input and its text read from its standard output: no image or text of a document is ever written to
disk (pytesseract writes both to temporary files), and each page has its own time bound (`page_timeout_s`, the
process is killed past it). It runs as a child of the sandboxed extraction worker, so it inherits the worker's
address-space limit, and with one thread (OMP_THREAD_LIMIT=1) so that it shares the machine as the worker does.

PDF pages are rasterised with pypdfium2 (PDFium; BSD-3-Clause / Apache-2.0) at `dpi`, in grey, and images are
decoded with Pillow. An image whose header declares more than MAX_IMAGE_PIXELS is refused before a pixel is
decoded (a decompression bomb); a PDF page that large is rendered at a lower resolution instead. A document with
more than `max_pages` pages to OCR is refused whole (too-many-pages) rather than read in part.

Refusals are `UnreadableDocument`s with a ReasonCode; a machine without tesseract (or without a configured
language) raises `OcrUnavailable`, which is not the document's fault. Knows nothing of Dagster.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument

DEFAULT_LANGUAGES = "eng"
DEFAULT_DPI = 200
DEFAULT_PAGE_TIMEOUT_S = 30.0
DEFAULT_MAX_PAGES = 50
# Declared pixels (width x height) above which an image is refused before decoding: a 600-dpi A4 page has 35 M.
MAX_IMAGE_PIXELS = 40_000_000
INSTALL_HINT = "install it with: apt-get install tesseract-ocr tesseract-ocr-eng"
LANGUAGES_PATTERN = re.compile(r"[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


class OcrUnavailable(RuntimeError):
    """OCR cannot run on this machine (tesseract or a configured language pack is missing, or it cannot be
    started). Not the document's fault: it should stay pending until the machine is fixed. `code` is
    "ocr-unavailable"; the message says how to install what is missing and never quotes the document."""

    code = "ocr-unavailable"


@dataclass(frozen=True)
class OcrSettings:
    """How (and whether) pages without a text layer and images are OCRed.

    enabled: False turns OCR off (scanned PDFs are then no-text, images unsupported-format, as without OCR).
    languages: tesseract's `+`-joined language codes (INGEST_OCR_LANGUAGES), default "eng".
    page_timeout_s: wall-clock seconds tesseract may take on one page; past it the document is refused.
    max_pages: pages one document may have to OCR; a document with more is refused (too-many-pages).
    dpi: the resolution PDF pages are rendered at for OCR.
    tesseract: the program to run (a name on PATH or a path).
    """

    enabled: bool = True
    languages: str = DEFAULT_LANGUAGES
    page_timeout_s: float = DEFAULT_PAGE_TIMEOUT_S
    max_pages: int = DEFAULT_MAX_PAGES
    dpi: int = DEFAULT_DPI
    tesseract: str = "tesseract"


OCR_OFF = OcrSettings(enabled=False)


@dataclass(frozen=True)
class OcrPages:
    """Page texts in order (one per PDF page or image frame) and how many of them were OCRed."""

    texts: list[str]
    pages_ocred: int


def image_kind(data: bytes) -> str | None:
    """'png', 'jpeg' or 'tiff' when the bytes start with that format's signature, else None."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def tesseract_path(settings: OcrSettings) -> str:
    """The tesseract program to run, or OcrUnavailable saying how to install it."""
    found = shutil.which(settings.tesseract)
    if found is None:
        raise OcrUnavailable(f"OCR is on, but tesseract ({settings.tesseract!r}) is not installed; {INSTALL_HINT}, "
                             "or switch OCR off with INGEST_OCR=off")
    return found


@functools.lru_cache(maxsize=8)
def _languages_of(program: str, mtime_ns: int) -> frozenset[str]:
    try:
        listed = subprocess.run([program, "--list-langs"], capture_output=True, text=True, timeout=30,
                                env=_tesseract_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OcrUnavailable(f"tesseract could not be run ({type(exc).__name__}); {INSTALL_HINT}") from None
    if listed.returncode != 0:
        raise OcrUnavailable(f"tesseract --list-langs failed (exit code {listed.returncode}); {INSTALL_HINT}")
    lines = listed.stdout.splitlines()
    return frozenset(line.strip() for line in lines[1:] if line.strip())  # the first line names the folder


def available_languages(settings: OcrSettings = OcrSettings()) -> frozenset[str]:
    """The language codes `tesseract --list-langs` reports (OcrUnavailable when tesseract is missing)."""
    program = tesseract_path(settings)
    return _languages_of(program, os.stat(program).st_mtime_ns)


def missing_languages(settings: OcrSettings) -> list[str]:
    """The configured languages that tesseract does not have (OcrUnavailable when tesseract is missing)."""
    installed = available_languages(settings)
    return [language for language in settings.languages.split("+") if language not in installed]


def language_packages(languages: list[str]) -> str:
    """Debian's packages of tesseract's data for `languages` ("chi_sim" is in tesseract-ocr-chi-sim)."""
    return " ".join("tesseract-ocr-" + language.lower().replace("_", "-") for language in languages)


def ocr_pdf_pages(document_name: str, data: bytes, page_texts: list[str], settings: OcrSettings) -> OcrPages:
    """`page_texts` (a PDF's text layer, page by page) with every page that has no text OCRed.

    Pages with text are left as they are, byte for byte; with OCR off, or when no page is blank, nothing runs.
    """
    blank = [index for index, text in enumerate(page_texts) if not text.strip()]
    if not settings.enabled or not blank:
        return OcrPages(list(page_texts), 0)
    _check_page_count(document_name, len(blank), settings)
    program = _ready(settings)
    import pypdfium2

    texts = list(page_texts)
    try:
        pdf = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as exc:
        raise UnreadableDocument(document_name, f"corrupt PDF for rendering ({type(exc).__name__})",
                                 ReasonCode.CORRUPT_PDF) from None
    try:
        for index in blank:
            texts[index] = _ocr(document_name, program, _render(document_name, pdf, index, settings), settings)
    finally:
        pdf.close()
    return OcrPages(texts, len(blank))


def ocr_image(document_name: str, data: bytes, settings: OcrSettings) -> OcrPages:
    """The text of an image (PNG, JPEG, TIFF), one page per frame of a multi-page TIFF.

    The image's declared size is checked before it is decoded (image-too-large); a truncated or corrupt image
    is corrupt-image; more than `settings.max_pages` frames is too-many-pages.
    """
    program = _ready(settings)
    texts = [_ocr(document_name, program, _grey_png(document_name, frame), settings)
             for frame in _frames(document_name, data, settings)]
    return OcrPages(texts, len(texts))


def _ready(settings: OcrSettings) -> str:
    """The tesseract program, after checking that it has every configured language."""
    missing = missing_languages(settings)
    if missing:
        raise OcrUnavailable(
            f"tesseract has no language data for {'+'.join(missing)} (INGEST_OCR_LANGUAGES); install it with: "
            f"apt-get install {language_packages(missing)}")
    return tesseract_path(settings)


def _check_page_count(document_name: str, pages: int, settings: OcrSettings) -> None:
    if pages > settings.max_pages:
        raise UnreadableDocument(
            document_name, f"{pages} pages to OCR, more than the limit of {settings.max_pages} per document",
            ReasonCode.TOO_MANY_PAGES)


def _frames(document_name: str, data: bytes, settings: OcrSettings) -> Iterator:
    """The frames of an image, one at a time, each checked for its declared size before it is decoded; an image
    with more frames than `settings.max_pages` is refused before any is decoded (seeking reads headers only)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own guard too (it refuses at twice this)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(document_name) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnreadableDocument(document_name, f"corrupt image ({type(exc).__name__})",
                                 ReasonCode.CORRUPT_IMAGE) from None
    with image:
        if _has_frame(document_name, image, settings.max_pages):
            raise UnreadableDocument(
                document_name, f"more than {settings.max_pages} pages (image frames) to OCR, the limit per document",
                ReasonCode.TOO_MANY_PAGES)
        for index in range(settings.max_pages):
            if not _has_frame(document_name, image, index):
                return
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _too_large(document_name, width, height)
            yield image


def _has_frame(document_name: str, image, index: int) -> bool:
    """Seek `image` to frame `index`: False when it has no such frame."""
    try:
        image.seek(index)
    except EOFError:
        return False
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableDocument(document_name, f"corrupt image ({type(exc).__name__})",
                                 ReasonCode.CORRUPT_IMAGE) from None
    return True


def _too_large(document_name: str, width: int | None = None, height: int | None = None) -> UnreadableDocument:
    size = f" ({width} x {height} pixels)" if width else ""
    return UnreadableDocument(
        document_name, f"image declares more pixels{size} than the limit of {MAX_IMAGE_PIXELS} (a decompression "
        "bomb?); refused before decoding", ReasonCode.IMAGE_TOO_LARGE)


def _grey_png(document_name: str, frame) -> bytes:
    """One decoded frame, in grey, as PNG bytes for tesseract (which then decodes nothing of the upload)."""
    from PIL import Image

    try:
        frame.load()
        grey = frame.convert("L")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(document_name) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated data, a broken stream
        raise UnreadableDocument(document_name, f"corrupt image ({type(exc).__name__})",
                                 ReasonCode.CORRUPT_IMAGE) from None
    buffer = io.BytesIO()
    grey.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _render(document_name: str, pdf, index: int, settings: OcrSettings) -> bytes:
    """PDF page `index` rendered in grey at `settings.dpi` (lower for a page too large for MAX_IMAGE_PIXELS)."""
    import pypdfium2

    try:
        page = pdf[index]
        width, height = page.get_size()  # points: 1/72 inch
        scale = settings.dpi / 72
        if width <= 0 or height <= 0:
            return b""
        if width * height * scale * scale > MAX_IMAGE_PIXELS:
            scale = math.sqrt(MAX_IMAGE_PIXELS / (width * height))
        bitmap = page.render(scale=scale, grayscale=True)
        image = bitmap.to_pil()
    except pypdfium2.PdfiumError as exc:
        raise UnreadableDocument(document_name, f"corrupt PDF page for rendering ({type(exc).__name__})",
                                 ReasonCode.CORRUPT_PDF) from None
    buffer = io.BytesIO()
    image.convert("L").save(buffer, "PNG", compress_level=1, dpi=(round(scale * 72),) * 2)
    return buffer.getvalue()


def _tesseract_env() -> dict[str, str]:
    # One thread: tesseract's OpenMP threads would each take a core and reserve address space under the limit.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_THREAD_LIMIT": "1", "LC_ALL": "C"}


def _ocr(document_name: str, program: str, png: bytes, settings: OcrSettings) -> str:
    """The text tesseract reads in one page image, within `settings.page_timeout_s`."""
    if not png:
        return ""
    try:
        done = subprocess.run([program, "stdin", "stdout", "-l", settings.languages], input=png,
                              capture_output=True, timeout=settings.page_timeout_s, env=_tesseract_env())
    except subprocess.TimeoutExpired:
        raise UnreadableDocument(
            document_name, f"OCR of a page took longer than {settings.page_timeout_s:g} s (the per-page limit); "
            "stopped", ReasonCode.OCR_TIME_LIMIT) from None
    except OSError as exc:
        raise OcrUnavailable(f"tesseract could not be started ({type(exc).__name__}); {INSTALL_HINT}") from None
    if done.returncode != 0:
        # tesseract's own messages may name what it read, so only the exit code is kept.
        raise UnreadableDocument(document_name, f"OCR failed (tesseract exit code {done.returncode})",
                                 ReasonCode.PARSER_ERROR)
    return done.stdout.decode("utf-8", errors="replace").strip()  # tesseract ends a page with a form feed
