"""Disk full, on real small filesystems: a size-limited tmpfs mounted (as root) under the landing zone or under
embedded CyborgDB's storage, filled up to a few kilobytes. Writing there fails with ENOSPC from the kernel,
not from a fake: the error must be clear, nothing corrupted, and once space is freed a re-run converges.
"""

import hashlib
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterEventType

from ingest_pipeline.core.ids import document_id
from ingest_pipeline_tests.helpers import materialize_partition, step_events
from ingest_pipeline_tests.reliability.invariant import assert_invariant, check_invariant, search_fingerprint

FILLER = ".filler"  # a hidden file at the mount's root: no tenant's, never a document


def _can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().count("tmpfs") > 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason="mounting a size-limited tmpfs needs root")


@contextmanager
def small_filesystem(path: Path, size: str):
    """A tmpfs of `size` mounted on `path` (created empty) for the duration; unmounted lazily afterwards (a
    process may still hold a file open there)."""
    path.mkdir(parents=True, exist_ok=False)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave_bytes: int) -> None:
    """Fill the filesystem of `path` until about `leave_bytes` are free."""
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    with open(path / FILLER, "ab") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    stats = os.statvfs(path)
    assert stats.f_bavail * stats.f_frsize <= leave_bytes + stats.f_frsize



def test_a_full_landing_zone_fails_the_upload_clearly_and_leaves_no_partial_file(embedded_pipeline, small_docs,
                                                                                  scenario):
    pipeline = embedded_pipeline
    scenario.details = {"backend": "embedded", "filesystem": "tmpfs 512k under INGEST_HOME/landing"}
    tenant = pipeline.tenant("acme")
    first, second = sorted(small_docs.iterdir())  # 11 KB and 15 KB
    with small_filesystem(pipeline.home / "landing", "512k") as landing:
        pipeline.upload(tenant, first)
        fill(landing, leave_bytes=8 * 1024)

        result = pipeline.run_cli("upload", "--tenant", tenant, str(second), check=False)
        scenario.details["cli_exit_code"] = result.returncode
        assert result.returncode != 0
        assert "No space left on device" in result.stderr
        # Nothing partial: no temporary file, no truncated document, no upload recorded for it.
        assert sorted(p.name for p in (landing / tenant).iterdir()) == [first.name]
        with pipeline.ledger().connect() as conn:
            assert pipeline.ledger().uploads.latest(conn, document_id(tenant, second.name)) is None

        # What was acknowledged is ingested meanwhile.
        pipeline.ingest(tenant)
        assert_invariant(tenant, {first.name})

        # Space is freed: the same upload goes through and a re-run converges.
        (landing / FILLER).unlink()
        assert pipeline.upload(tenant, second)["uploaded"] == [second.name]
        landed = (landing / tenant / second.name).read_bytes()
        assert hashlib.sha256(landed).digest() == hashlib.sha256(second.read_bytes()).digest()
        pipeline.ingest(tenant)
        scenario.add_invariant(assert_invariant(tenant, {first.name, second.name}))
        assert pipeline.search(tenant, "How does pip resolve conflicting dependencies?", 1)[0]["source"] == second.name
    scenario.survived()


def test_a_full_cyborgdb_disk_fails_the_ingest_clearly_and_a_rerun_converges(embedded_pipeline, small_docs,
                                                                            scenario, clean_references):
    pipeline = embedded_pipeline
    scenario.details = {"backend": "embedded", "filesystem": "tmpfs 1m under INGEST_HOME/cyborgdb"}
    reference = clean_references.fingerprint(pipeline, small_docs.iterdir())
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, small_docs)
    with small_filesystem(pipeline.home / "cyborgdb", "1m") as storage:
        fill(storage, leave_bytes=48 * 1024)  # room for the index, not for its vectors
        result = materialize_partition(tenant)
        assert not result.success
        failures = step_events(result.run_id, DagsterEventType.STEP_FAILURE, "cyborgdb_index")
        assert len(failures) == 1
        error, messages = failures[0].dagster_event.step_failure_data.error, []
        while error is not None:  # after the last retry the failure is "Exceeded max_retries"; its cause says why
            messages.append(error.message)
            error = error.cause
        message = " | ".join(messages)
        scenario.details["error"] = message.strip()[:300]
        assert tenant in message and "no space left on device" in message
        # Nothing corrupted: every chunk still decrypts, nothing is marked indexed that the index lacks.
        left = check_invariant(tenant)
        scenario.details["left_behind"] = {k: len(v) if isinstance(v, list) else v for k, v in left.items()}
        assert left["undecryptable"] == 0 and left["duplicates"] == 0 and left["missing_from_index"] == []

        (storage / FILLER).unlink()
        pipeline.ingest(tenant)
        scenario.add_invariant(assert_invariant(tenant, {p.name for p in small_docs.iterdir()}))
        assert search_fingerprint(pipeline, tenant) == reference
    scenario.survived()

