"""The bundled SQuAD sample's articles, written in every format the pipeline reads, by the tools that make them.

Each article (the passages of one title in `benchmarks/data/qa_set.jsonl`, in their order) becomes one document
per format: its title as a heading, its passages as paragraphs. The conversions are the real tools':

- `txt`: the article as plain text (the title line, the passages separated by blank lines): the baseline.
- `md`: the same with the title as a Markdown heading: the source of every pandoc conversion.
- `docx`, `odt`, `rtf`, `epub`, `html`: pandoc from `md` (`-f markdown-smart`, so that quotes stay as typed).
- `pdf`: LibreOffice headless from the pandoc `docx` (writer_pdf_Export): a text layer, pages as Writer lays them.
- `pptx`: pandoc from `md` with a slide per passage (a level-2 heading "Part N" each); `odp`: LibreOffice from it.
- `csv`: one passage per row (columns article, part, text); `xlsx`: LibreOffice from the CSV.
- `eml`: Python's email package, the article as the text/plain body; `eml-docx`: a short body with the `docx`
  attached.
- `scan-pdf`, `scan-tiff`: the `pdf` rasterised with pypdfium2 at 200 dpi in grey, saved by Pillow as an
  image-only PDF (JPEG pages, no text layer) and as a multi-page TIFF (deflate): the pipeline OCRs both.

Needs pandoc and LibreOffice (`libreoffice-writer-nogui`, `-calc-nogui`, `-impress-nogui`); `make recall-formats`
installs them with apt when missing.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

QA_SET = Path(__file__).parent / "data" / "qa_set.jsonl"
SCAN_DPI = 200
# In the order the figures are printed; the baseline first.
FORMATS = ("txt", "md", "docx", "odt", "rtf", "epub", "html", "pdf", "pptx", "odp", "csv", "xlsx", "eml",
           "eml-docx", "scan-pdf", "scan-tiff")
SCANS = ("scan-pdf", "scan-tiff")
_SUFFIX = {"eml-docx": "eml", "scan-pdf": "pdf", "scan-tiff": "tif"}
APT_HINT = ("apt-get install -y --no-install-recommends pandoc libreoffice-writer-nogui libreoffice-calc-nogui "
            "libreoffice-impress-nogui")


@dataclass(frozen=True)
class Article:
    """One SQuAD article: its title (as in the context ids, underscores and all) and its passages in order."""

    title: str
    passages: tuple[str, ...]

    @property
    def heading(self) -> str:
        return self.title.replace("_", " ")

    def plain_text(self) -> str:
        return "\n\n".join((self.heading, *self.passages)) + "\n"

    def markdown(self) -> str:
        return "\n\n".join((f"# {self.heading}", *self.passages)) + "\n"

    def slides_markdown(self) -> str:
        parts = [f"## Part {number}\n\n{passage}" for number, passage in enumerate(self.passages, start=1)]
        return "\n\n".join((f"# {self.heading}", *parts)) + "\n"


def load_articles(path: Path = QA_SET) -> list[Article]:
    """The QA set's passages grouped by article title (context ids `squad2-dev/<Title>/pNN`), in file order."""
    passages: dict[str, dict[str, str]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            passages[record["context_id"].split("/")[1]][record["context_id"]] = record["context"]
    return [Article(title, tuple(by_id[key] for key in sorted(by_id))) for title, by_id in passages.items()]


def missing_tools() -> list[str]:
    """The programs the conversions need that are not on PATH."""
    return [tool for tool in ("pandoc", "soffice") if shutil.which(tool) is None]


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed (exit code {done.returncode}): {done.stderr[-1000:]}")


def _soffice(profile: Path, target: str, outdir: Path, files: list[Path], infilter: str | None = None) -> None:
    """LibreOffice headless, with a profile of its own (several may run on the machine at once)."""
    command = ["soffice", f"-env:UserInstallation=file://{profile}", "--headless"]
    if infilter:
        command.append(f"--infilter={infilter}")
    _run(*command, "--convert-to", target, "--outdir", str(outdir), *map(str, files))


def _stem(article: Article) -> str:
    return article.title.lower().replace("_", "-")


def build_corpus(folder: Path, articles: list[Article] | None = None) -> dict[str, list[Path]]:
    """Every article in every format under `folder/<format>/`; returns the files per format (FORMATS' order).

    Raises RuntimeError naming what is missing when pandoc or LibreOffice is not installed.
    """
    if missing := missing_tools():
        raise RuntimeError(f"not installed: {', '.join(missing)}; {APT_HINT}")
    articles = articles or load_articles()
    dirs = {fmt: folder / fmt for fmt in FORMATS}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lo-profile-") as profile:
        for article in articles:
            stem = _stem(article)
            (dirs["txt"] / f"{stem}.txt").write_text(article.plain_text())
            source = dirs["md"] / f"{stem}.md"
            source.write_text(article.markdown())
            for fmt in ("docx", "odt", "rtf", "epub", "html"):
                # The heading is the title already; HTML needs a <title> and an EPUB a title (its title page).
                metadata = {"html": ["--metadata", f"pagetitle={article.heading}"],
                            "epub": ["--metadata", f"title={article.heading}"]}.get(fmt, [])
                _run("pandoc", "-f", "markdown-smart", "--standalone", *metadata, str(source), "-o",
                     str(dirs[fmt] / f"{stem}.{fmt}"))
            slides = Path(profile) / f"{stem}-slides.md"
            slides.write_text(article.slides_markdown())
            _run("pandoc", "-f", "markdown-smart", "--slide-level=2", str(slides), "-o",
                 str(dirs["pptx"] / f"{stem}.pptx"))
            with open(dirs["csv"] / f"{stem}.csv", "w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["article", "part", "text"])
                writer.writerows([article.heading, number, passage]
                                 for number, passage in enumerate(article.passages, start=1))
            (dirs["eml"] / f"{stem}.eml").write_bytes(_message(article, article.plain_text()))
        lo = Path(profile) / "profile"
        _soffice(lo, "pdf:writer_pdf_Export", dirs["pdf"], sorted(dirs["docx"].glob("*.docx")))
        _soffice(lo, "odp", dirs["odp"], sorted(dirs["pptx"].glob("*.pptx")))
        # 44 = comma, 34 = double quote, 76 = UTF-8, 1 = start at the first line.
        _soffice(lo, "xlsx", dirs["xlsx"], sorted(dirs["csv"].glob("*.csv")), infilter="CSV:44,34,76,1")
    for article in articles:
        stem = _stem(article)
        attachment = (dirs["docx"] / f"{stem}.docx").read_bytes()
        (dirs["eml-docx"] / f"{stem}.eml").write_bytes(_message(article, "The article is attached.\n", attachment,
                                                                f"{stem}.docx"))
        scan_pages = rasterise(dirs["pdf"] / f"{stem}.pdf")
        # Fresh copies for each save: Pillow leaves one writer's options on the appended images.
        first, *rest = [page.copy() for page in scan_pages]
        first.save(dirs["scan-pdf"] / f"{stem}.pdf", "PDF", save_all=True, append_images=rest, resolution=SCAN_DPI)
        first, *rest = [page.copy() for page in scan_pages]
        first.save(dirs["scan-tiff"] / f"{stem}.tif", "TIFF", save_all=True, append_images=rest,
                   compression="tiff_deflate", dpi=(SCAN_DPI, SCAN_DPI))
    return {fmt: sorted(dirs[fmt].glob(f"*.{_SUFFIX.get(fmt, fmt)}")) for fmt in FORMATS}


def _message(article: Article, body: str, attachment: bytes | None = None, filename: str = "") -> bytes:
    message = EmailMessage()
    message["Subject"] = article.heading
    message["From"] = "Benchmark <bench@example.org>"
    message["To"] = "Reader <reader@example.org>"
    message["Date"] = "Sat, 14 Mar 2026 09:30:00 +0000"
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application",
                               subtype="vnd.openxmlformats-officedocument.wordprocessingml.document",
                               filename=filename)
    return bytes(message)


def rasterise(pdf_path: Path, dpi: int = SCAN_DPI) -> list:
    """The PDF's pages as grey Pillow images at `dpi`, as a scanner would deliver them."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(pdf_path))
    try:
        return [page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L") for page in pdf]
    finally:
        pdf.close()


def pdf_pages(folder: dict[str, list[Path]]) -> int:
    """The pages of the articles as LibreOffice lays them out (the `pdf` files): the unit of pages/s for every
    format, so that figures compare the same content."""
    from pypdf import PdfReader

    return sum(len(PdfReader(path).pages) for path in folder["pdf"])
