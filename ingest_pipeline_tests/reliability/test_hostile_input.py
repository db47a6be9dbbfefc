"""Hostile input: every hostile file is quarantined or refused with a reason code naming it, never quoting it;
extraction is bounded in time and memory; the good documents of the same run are indexed and searchable."""

import io
import logging
import os
import random
from pathlib import Path

import pytest
from dagster import DagsterEventType
from pypdf import PdfReader, PdfWriter

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import InvalidName
from ingest_pipeline.core.ocr import DEFAULT_MAX_PAGES
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.stores.landing_zone import LandingZone, RefusedFile
from ingest_pipeline.work.uploads import record_dropped_files
from ingest_pipeline_tests.helpers import CORPUS, step_events
from ingest_pipeline_tests.hostile_files import (
    MiB,
    billion_laughs_docx,
    bomb_pdf,
    docx_with_member,
    encrypted_office_file,
    entity_epub,
    external_entity_docx,
    external_entity_odt,
    many_frames_tiff,
    million_cell_xlsx,
    nested_multipart_email,
    office_zip_bomb,
    pixel_bomb_png,
    single_line,
    truncated,
    truncated_png,
)
from ingest_pipeline_tests.reliability.invariant import QUERIES, assert_invariant

MARKER = "HOSTILE-CONTENT-{}-5b1e"  # written into each hostile file; must never show up anywhere
MEMORY_LIMIT_MB = 512  # the extraction workers' bound in this test (the default is 1024)
TIMEOUT_S = 5  # per document in this test (the default is 60)
# The step's own high-water mark may rise this much at most while the hostile set goes through, while the
# bombs alone would need 1 GiB (spread over pages) and 2 GiB (one stream) if they were inflated in the step.
STEP_GROWTH_BOUND_MB = 200
GOOD = {"apache-license-2.0.txt", "pip-dependency-resolution.md", "shared-mime-info-spec.pdf",
        "debian-users-and-groups.html"}


def _marker(name: str) -> bytes:
    return MARKER.format(name).encode()


def _encrypted_pdf(text_page_source) -> bytes:
    writer = PdfWriter()
    writer.add_page(PdfReader(text_page_source).pages[0])
    writer.encrypt(user_password="s3cret-user", owner_password="owner")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _noise(size: int, seed: int) -> bytes:
    generator = random.Random(seed)
    return bytes(generator.randrange(1, 256) for _ in range(size))


def hostile_uploads(folder, outside_secret) -> dict[str, set[str]]:
    """Write the hostile files that go through `ingest-pipeline upload`; return each name's acceptable codes.
    `outside_secret` is a file outside the upload that external entities point at (never to be read)."""
    contract = Path(__file__).parents[1] / "fixtures" / "formats" / "contract.docx"  # written by pandoc
    files = {
        "empty.txt": (b"", {ReasonCode.EMPTY}),
        "invalid-utf8.txt": (_marker("utf8") + _noise(6000, 1), {ReasonCode.INVALID_ENCODING}),
        "truncated-multibyte.md": ((b"\xe6\x97\xa5\xe6\x97" + _noise(60, 2)) * 100 + _marker("trunc"),
                                   {ReasonCode.INVALID_ENCODING}),
        "nul-bytes.txt": (_marker("nul") + b" plain words\x00\x00 more words", {ReasonCode.BINARY}),
        # PNG's signature is read as an image whatever the extension says (OCR), and this one is broken.
        "photo.txt": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _marker("png") + bytes(range(256)) * 16,
                      {ReasonCode.CORRUPT_IMAGE}),
        "pixel-bomb.png": (pixel_bomb_png(), {ReasonCode.IMAGE_TOO_LARGE}),  # 50,000 x 50,000 pixels declared
        "truncated.png": (truncated_png(), {ReasonCode.CORRUPT_IMAGE}),
        "frames.tif": (many_frames_tiff(), {ReasonCode.TOO_MANY_PAGES}),  # more frames than OCR's page cap
        "locked.pdf": (_encrypted_pdf(CORPUS / "acme/shared-mime-info-spec.pdf"), {ReasonCode.ENCRYPTED_PDF}),
        "corrupt.pdf": (b"%PDF-1.7\n" + _marker("pdf") + bytes(range(256)) * 40, {ReasonCode.CORRUPT_PDF}),
        "bomb.pdf": (bomb_pdf(2048 * MiB), {ReasonCode.DECOMPRESSION_LIMIT, ReasonCode.MEMORY_LIMIT}),
        # Pages inflating to 1 GiB in all: past the memory bound, or past the time bound first on a busy machine.
        "pages-bomb.pdf": (bomb_pdf(70 * MiB, pages=15), {ReasonCode.MEMORY_LIMIT, ReasonCode.TIME_LIMIT}),
        "slides.docx": (b"PK\x03\x04" + _marker("docx"), {ReasonCode.CORRUPT_DOCUMENT}),  # a ZIP cut short
        # Business documents: each container is checked before a parser sees it.
        "bomb.docx": (office_zip_bomb(2 * 1024 * MiB), {ReasonCode.DECOMPRESSION_LIMIT}),  # 2 GiB inflated
        "lying-sizes.docx": (office_zip_bomb(256 * MiB, lie=True), {ReasonCode.CORRUPT_DOCUMENT}),
        "laughs.docx": (billion_laughs_docx(), {ReasonCode.UNSAFE_DOCUMENT}),
        "xxe.docx": (external_entity_docx(str(outside_secret)), {ReasonCode.UNSAFE_DOCUMENT}),
        "xxe.odt": (external_entity_odt(str(outside_secret)), {ReasonCode.UNSAFE_DOCUMENT}),
        "entities.epub": (entity_epub(), {ReasonCode.UNSAFE_DOCUMENT}),
        "escape.docx": (docx_with_member("../../etc/cron.d/job", _marker("escape")), {ReasonCode.UNSAFE_DOCUMENT}),
        "million.xlsx": (million_cell_xlsx(), {ReasonCode.CONTENT_LIMIT, ReasonCode.TIME_LIMIT}),
        "nested.eml": (nested_multipart_email(5_000), {ReasonCode.TOO_DEEPLY_NESTED, ReasonCode.TIME_LIMIT}),
        "locked.xlsx": (encrypted_office_file(), {ReasonCode.ENCRYPTED_DOCUMENT}),
        "cut.docx": (truncated(contract.read_bytes()), {ReasonCode.CORRUPT_DOCUMENT}),
        # 100,000 nested elements: extracted, or refused as too deep; either way the step carries on.
        "deep.html": (b"<div>" * 100_000 + b"nested paragraphs" + b"</div>" * 100_000,
                      {None, ReasonCode.TOO_DEEPLY_NESTED, ReasonCode.TIME_LIMIT, ReasonCode.MEMORY_LIMIT}),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    # A 50 MB single line, under the 50 MiB limit: not chunked within the time bound.
    (folder / "one-line.txt").write_bytes(single_line(50_000_000))
    # Just over the limit (a sparse file: cheap to make): refused before it is read.
    with open(folder / "over-limit.txt", "wb") as handle:
        handle.truncate(50 * MiB + 1)
    codes = {name: {str(code) if code else None for code in accepted} for name, (_, accepted) in files.items()}
    codes["one-line.txt"] = {ReasonCode.TIME_LIMIT.value}
    codes["over-limit.txt"] = {ReasonCode.TOO_LARGE.value}
    return codes


def test_hostile_input_is_quarantined_with_codes_bounded_and_the_rest_indexed(
    embedded_pipeline, docs, tmp_path, monkeypatch, caplog, scenario
):
    pipeline = embedded_pipeline
    monkeypatch.setenv("INGEST_EXTRACTION_MEMORY_MB", str(MEMORY_LIMIT_MB))
    monkeypatch.setenv("INGEST_EXTRACTION_TIMEOUT_S", str(TIMEOUT_S))
    caplog.set_level(logging.INFO)
    tenant = pipeline.tenant("hostile")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(_marker("outside") + b" a file outside the upload\n")
    expected = hostile_uploads(hostile, outside / "secret.txt")

    # Refused at upload: a control character in the name, and a link (which could point anywhere).
    bad_upload = tmp_path / "bad-upload"
    bad_upload.mkdir()
    (bad_upload / "bell\x07name.txt").write_bytes(_marker("badname") + b"\n")
    (bad_upload / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(InvalidName, match="U\\+0007"):
        pipeline.upload(tenant, bad_upload / "bell\x07name.txt")
    with pytest.raises(RefusedFile, match="symbolic link") as refused_link:
        pipeline.upload(tenant, bad_upload / "link.txt")
    assert refused_link.value.code == ReasonCode.SYMLINK
    # A folder holding a link: the link is skipped and reported, its target never read; nothing else is uploaded.
    (bad_upload / "bell\x07name.txt").unlink()
    folder_outcome = pipeline.upload(tenant, bad_upload)
    assert folder_outcome["refused"] == ["link.txt (symlink)"] and folder_outcome["uploaded"] == []

    outcome = pipeline.upload(tenant, docs, *sorted(hostile.iterdir()))
    assert sorted(outcome["uploaded"]) == sorted(GOOD | expected.keys())

    # Dropped straight into the landing zone by another system: never read, refused with a code.
    folder = pipeline.home / "landing" / tenant
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    (folder / "bell\x07name.txt").write_bytes(_marker("dropped-badname") + b"\n")
    (folder / "..\\..\\escape.txt").write_bytes(_marker("backslash") + b"\n")
    with open(os.fsencode(folder) + b"/caf\xe9.txt", "wb") as not_utf8_name:  # a name that is not UTF-8
        not_utf8_name.write(_marker("latin1-name") + b"\n")
    os.mkfifo(folder / "pipe.txt")
    dropped = {"link.txt": ReasonCode.SYMLINK, "linked-folder": ReasonCode.SYMLINK,
               "bell\x07name.txt": ReasonCode.BAD_NAME, "..\\..\\escape.txt": ReasonCode.BAD_NAME,
               os.fsdecode(b"caf\xe9.txt"): ReasonCode.BAD_NAME, "pipe.txt": ReasonCode.SPECIAL_FILE}

    # The model loaded first (as in a code server that has ingested before): the growth bound below is the step's
    # own, not the model's, which an ingest otherwise loads on a thread while this step chunks.
    build_resources()["embedding_model"].embedder  # noqa: B018 - loads it
    summary = pipeline.ingest(tenant)  # asserts the run succeeded

    # Every uploaded hostile file is quarantined with an expected code; deep.html may have been read.
    found = {item["document"]: item["code"] for item in summary["quarantined"][tenant]}
    for name, accepted in expected.items():
        assert found.get(name) in accepted, (name, found.get(name))
    assert not GOOD & found.keys()
    assert all(item["reason"] for item in summary["quarantined"][tenant])
    # A limit's refusal records the limit it was made under (a larger one tries it again); the content's, none.
    for item in summary["quarantined"][tenant]:
        limited = item["code"] in {"time-limit", "memory-limit", "crashed", "too-large", "too-many-pages",
                                   "ocr-time-limit"}
        assert bool(item.get("limits")) == limited, item
        if item["code"] == "time-limit":
            assert item["limits"] in ({"timeout_s": TIMEOUT_S}, {"cpu_seconds": TIMEOUT_S}), item
        if item["code"] == "memory-limit":
            assert item["limits"] == {"memory_mb": MEMORY_LIMIT_MB}, item
        if item["code"] == "too-many-pages":
            assert item["limits"] == {"ocr_max_pages": DEFAULT_MAX_PAGES}, item
    readable = GOOD | ({"deep.html"} if "deep.html" not in found else set())

    # The run's metadata lists them, with their codes and a count per code, and the memory figures.
    run_id = summary["runs"][0]["run_id"]
    [materialization] = step_events(run_id, DagsterEventType.ASSET_MATERIALIZATION, "document_chunks")
    metadata = {k: v.value for k, v in materialization.dagster_event.event_specific_data.materialization
                .metadata.items()}
    assert {item["document"]: item["code"] for item in metadata["quarantined_documents"]} == found
    assert sum(metadata["quarantined_by_code"].values()) == metadata["documents_quarantined"] == len(found)
    assert metadata["documents_chunked"] == len(readable)
    assert metadata["extraction_memory_limit_mb"] == MEMORY_LIMIT_MB
    assert 0 < metadata["extraction_peak_rss_mb"] <= MEMORY_LIMIT_MB
    assert metadata["step_peak_rss_growth_mb"] < STEP_GROWTH_BOUND_MB, metadata

    # Files dropped into the landing zone were refused with their codes, by name, and never crashed the ingest.
    settings, ledger = prepare_environment()
    again = record_dropped_files(ledger, LandingZone(settings.landing_dir), tenant, limit=100)
    assert again.recorded == []
    assert again.refused == dropped
    assert "refused and not read" in caplog.text and "'bell\\x07name.txt' (bad-name)" in caplog.text

    # The good documents are indexed and searchable; nothing lost, nothing twice.
    status = pipeline.status(tenant)
    assert status["quarantined"] == len(found)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    top = {pipeline.search(tenant, query, 1)[0]["source"] for query in QUERIES}
    assert top == GOOD
    invariant = assert_invariant(tenant, expected_documents=readable)

    # No content of any hostile file (nor of the file behind the link) in the summary, logs or exceptions.
    hits = pipeline.search(tenant, MARKER.format("outside"), 5)
    logs = "\n".join(
        f"{record.user_message} {record.dagster_event.message if record.dagster_event else ''}"
        for record in dagster_instance().all_logs(run_id)
    )
    texts = {"summary": str(summary), "metadata": str(metadata), "dagster logs": logs, "python logs": caplog.text,
             "refusals": f"{refused_link.value} {again}", "search": str(hits)}
    for where, text in texts.items():
        assert "HOSTILE-CONTENT" not in text, where
        assert "s3cret-user" not in text, where

    scenario.category = "bad-input"
    scenario.bad_inputs = len(expected) + len(dropped) + 2  # the two refused at upload
    scenario.details = {
        "quarantined_by_code": metadata["quarantined_by_code"],
        "refused_in_landing_zone": {name.encode("unicode_escape").decode(): str(code)
                                    for name, code in dropped.items()},
        "extraction_memory_limit_mb": MEMORY_LIMIT_MB,
        "extraction_timeout_s": TIMEOUT_S,
        "extraction_peak_rss_mb": metadata["extraction_peak_rss_mb"],
        "extraction_workers_started": metadata["extraction_workers_started"],
        "step_peak_rss_mb": metadata["step_peak_rss_mb"],
        "step_peak_rss_growth_mb": metadata["step_peak_rss_growth_mb"],
        "bomb_inflated_mb": {"bomb.pdf": 2048, "pages-bomb.pdf": 15 * 70},
        "document_chunks_s": metadata["duration_s"],
    }
    scenario.add_invariant(invariant)
