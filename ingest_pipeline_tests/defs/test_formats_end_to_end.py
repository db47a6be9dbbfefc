"""The business formats and scans end to end on the real engines: files made by real tools (pandoc, LibreOffice,
Python's email package, a raster for OCR) uploaded, ingested once, counted per format in the Dagster metadata,
and found by search with their page and section."""

import json
import shutil
from pathlib import Path

import pytest

from ingest_pipeline import cli
from ingest_pipeline_tests.helpers import materialization_metadata, materialize_partition

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FILES = [FIXTURES / "formats" / name for name in ("contract.docx", "slides.pptx", "pricing.xlsx", "message.eml",
                                                   "contract.epub", "contract.odt", "contract.rtf", "pricing.csv")]
FILES += [FIXTURES / "ocr" / name for name in ("scanned.pdf", "receipt.png", "two-pages.tif")]
# The contract (contract.md) is in six of the files, the price list (pricing.csv) in two: a question about them
# may be answered by any copy, each with its own citation (page, section).
PAYMENT = {"contract.docx": (None, "Terms > Payment"), "contract.epub": (None, "Terms > Payment"),
           "contract.odt": (None, "Terms > Payment"), "contract.rtf": (None, None), "slides.pptx": ("3", "Terms"),
           "message.eml": (None, "Attachment: contract.docx > Terms > Payment")}
PRICES = {"pricing.csv": (None, None), "pricing.xlsx": ("pricing", "pricing")}
# A question whose answer is a distinctive fact, and where it is: the files that hold it, with their citations.
QUESTIONS = {
    "How much is the annual fee that Globex pays?": PAYMENT,
    "Who is the manager of Gearbox Delta?": PRICES,
    "Which guild sells heather honey?": {"two-pages.tif": ("2", None)},
    "What does the orchard cooperative ship to Lisbon?": {"two-pages.tif": ("1", None)},
    "Which invoice covers the new foghorn?": {"scanned.pdf": ("1", None)},
    "What was paid at the violin repair workshop?": {"receipt.png": ("1", None)},
    "Where is the kickoff meeting on the pier?": {"message.eml": (None, None)},
}


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed (`make install` does it)")
def test_every_format_is_ingested_counted_and_cited_in_search(embedded_pipeline, capsys):
    acme = embedded_pipeline.tenant("acme")
    assert sorted(embedded_pipeline.upload(acme, *FILES)["uploaded"]) == sorted(path.name for path in FILES)
    result = materialize_partition(acme)
    assert result.success
    metadata = materialization_metadata(result, "document_chunks")
    assert (metadata["documents_quarantined"], metadata["documents_chunked"]) == (0, len(FILES)), metadata
    assert metadata["documents_by_format"] == {"csv": 1, "docx": 1, "eml": 1, "epub": 1, "image": 2, "odt": 1,
                                               "pdf": 1, "pptx": 1, "rtf": 1, "xlsx": 1}
    assert metadata["pages_ocred"] == 4  # the scanned letter's page, the receipt, the TIFF's two pages

    # `search --json`: the top hit of each question is a file that holds its answer, cited where the answer is.
    questions = embedded_pipeline.home.parent / "questions.txt"
    questions.write_text("\n".join(QUESTIONS) + "\n")
    capsys.readouterr()
    assert cli.main(["search", "--tenant", acme, "--top-k", "3", "--queries-file", str(questions)]) == 0
    answers = json.loads(capsys.readouterr().out)
    for (question, where), hits in zip(QUESTIONS.items(), answers, strict=True):
        top = hits[0]
        assert top["source"] in where, (question, top["source"])
        assert (top["page"], top["section"]) == where[top["source"]], (question, top)

    # The table shows where each hit is.
    assert cli.main(["search", "--tenant", acme, "--top-k", "1", "Which guild sells heather honey?"]) == 0
    table = capsys.readouterr().out
    assert "where" in table and "p. 2" in table and "two-pages.tif" in table
