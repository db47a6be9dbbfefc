"""Hostile business documents (Office, OpenDocument, EPUB, e-mail) through the sandboxed extraction worker: each
is refused with its reason code, quickly, with the worker under its memory limit, and no secret leaks. The
builders live in ingest_pipeline_tests/hostile_files.py for the reliability suite too."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument
from ingest_pipeline.core.sandbox import ChunkingSpec, ExtractionSandbox, SandboxLimits
from ingest_pipeline_tests import hostile_files as hostile

MiB = hostile.MiB
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
LIMITS = SandboxLimits(memory_bytes=768 * MiB, timeout_s=30)


@pytest.fixture
def secret_file(tmp_path) -> Path:
    """A local file an external entity points at: its content must never reach a text, a reason or a log."""
    path = tmp_path / "secret.txt"
    path.write_text(f"{hostile.SECRET}-LOCAL-FILE\n")
    return path


def hostile_cases(secret_file: Path) -> dict[str, tuple[bytes, ReasonCode]]:
    return {
        "bomb.docx": (hostile.office_zip_bomb(2 * 1024 * MiB), ReasonCode.DECOMPRESSION_LIMIT),
        "lying-sizes.docx": (hostile.office_zip_bomb(256 * MiB, lie=True), ReasonCode.CORRUPT_DOCUMENT),
        "laughs.docx": (hostile.billion_laughs_docx(), ReasonCode.UNSAFE_DOCUMENT),
        "xxe.docx": (hostile.external_entity_docx(str(secret_file)), ReasonCode.UNSAFE_DOCUMENT),
        "xxe.odt": (hostile.external_entity_odt(str(secret_file)), ReasonCode.UNSAFE_DOCUMENT),
        "entities.epub": (hostile.entity_epub(), ReasonCode.UNSAFE_DOCUMENT),
        "escape.docx": (hostile.docx_with_member("../../etc/cron.d/job"), ReasonCode.UNSAFE_DOCUMENT),
        "absolute.docx": (hostile.docx_with_member("/etc/passwd"), ReasonCode.UNSAFE_DOCUMENT),
        "million.xlsx": (hostile.million_cell_xlsx(), ReasonCode.CONTENT_LIMIT),
        "nested.eml": (hostile.nested_multipart_email(5_000), ReasonCode.TOO_DEEPLY_NESTED),
        "locked.docx": (hostile.encrypted_office_file(), ReasonCode.ENCRYPTED_DOCUMENT),
        "locked.xlsx": (hostile.encrypted_office_file(), ReasonCode.ENCRYPTED_DOCUMENT),
        "cut.docx": (hostile.truncated((FIXTURES / "contract.docx").read_bytes()), ReasonCode.CORRUPT_DOCUMENT),
        "cut.epub": (hostile.truncated((FIXTURES / "contract.epub").read_bytes()), ReasonCode.CORRUPT_DOCUMENT),
    }


def test_every_hostile_document_is_refused_with_its_code_in_time_under_the_memory_limit(tmp_path, secret_file):
    folder = tmp_path / "landing"
    folder.mkdir()
    cases = hostile_cases(secret_file)
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    assert all((folder / name).stat().st_size < 4 * MiB for name in cases)  # small on disk, whatever they claim
    outcomes, seconds = {}, {}
    with ExtractionSandbox(LIMITS, ChunkingSpec.for_model("")) as sandbox:
        for name in cases:
            started = time.monotonic()
            with pytest.raises(UnreadableDocument) as info:
                sandbox.run(folder, name)
            seconds[name] = time.monotonic() - started
            error = info.value
            outcomes[name] = error.code
            assert hostile.SECRET not in str(error) and hostile.SECRET not in repr(error)
            assert error.limits is None  # the content is at fault, not a limit: the same under any limits
        peak = sandbox.peak_rss_bytes
    assert outcomes == {name: code for name, (_, code) in cases.items()}
    assert max(seconds.values()) < LIMITS.timeout_s / 2, seconds
    assert 0 < peak < 512 * MiB  # far below the gigabytes the bombs and the million cells would need


def test_the_parsers_themselves_never_resolve_an_external_entity(secret_file):
    """Defence in depth: even without the container scan, python-docx's parser leaves the entity unresolved."""
    import docx

    data = hostile.external_entity_docx(str(secret_file))
    text = "\n".join(paragraph.text for paragraph in docx.Document(io.BytesIO(data)).paragraphs)
    assert hostile.SECRET not in text


def test_business_formats_are_read_and_chunked_in_the_worker_with_their_pages_and_sections(tmp_path):
    for name in ("contract.docx", "slides.pptx", "pricing.xlsx", "message.eml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    with ExtractionSandbox(LIMITS, ChunkingSpec.for_model("")) as sandbox:
        results = {name: sandbox.run(tmp_path, name) for name in ("contract.docx", "slides.pptx", "pricing.xlsx",
                                                                   "message.eml")}
        text_only = ExtractionSandbox(LIMITS)
        with text_only:
            slides_text = text_only.run(tmp_path, "slides.pptx")
    assert {name: result.format for name, result in results.items()} == {
        "contract.docx": "docx", "slides.pptx": "pptx", "pricing.xlsx": "xlsx", "message.eml": "eml"}
    payment = next(chunk for chunk in results["slides.pptx"].chunks if "48,250 euros" in chunk.text)
    assert payment.page == "3" and payment.section == "Terms"
    assert {chunk.page for chunk in results["pricing.xlsx"].chunks} == {"pricing"}
    assert all(chunk.section for chunk in results["contract.docx"].chunks)
    assert [page.label for page in slides_text.pages] == ["1", "2", "3", "4", "5"]
    assert slides_text.sections[0].label.startswith("Service Agreement")
