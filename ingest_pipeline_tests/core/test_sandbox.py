"""Unit tests for ingest_pipeline.core.sandbox: extraction and chunking in a worker process under memory, CPU
and wall-clock limits, against real hostile files (PDF bombs, a long single line, links, FIFOs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument
from ingest_pipeline.core.sandbox import (
    ChunkingSpec,
    ExtractionSandbox,
    ExtractionUnavailable,
    SandboxLimits,
    SandboxPool,
    WorkerStartFailed,
)
from ingest_pipeline_tests.hostile_files import SECRET, MiB, bomb_pdf, single_line

# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunking() -> ChunkingSpec:
    return ChunkingSpec.for_model("")  # the bundled model's tokenizer


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "good.txt").write_text("The quarterly report is ready.\n\nRevenue grew by twelve percent.\n")
    return tmp_path


def refused(sandbox: ExtractionSandbox, folder: Path, name: str) -> UnreadableDocument:
    with pytest.raises(UnreadableDocument) as info:
        sandbox.run(folder, name)
    error = info.value
    assert error.document_name == name
    assert SECRET not in str(error) and SECRET not in repr(error)
    return error


# --- healthy documents ---------------------------------------------------------------------------------


def test_one_worker_extracts_and_chunks_document_after_document(folder, chunking):
    (folder / "notes.md").write_text("# Title\n\nA paragraph about ingestion.\n")
    with ExtractionSandbox(SandboxLimits(), chunking) as sandbox:
        first = sandbox.run(folder, "good.txt")
        second = sandbox.run(folder, "notes.md")
        assert sandbox.workers_started == 1  # reused while healthy
    assert first.format == "text" and second.format == "markdown"
    assert "twelve percent" in " ".join(chunk.text for chunk in first.chunks)
    assert first.chunks[0].sequence == 0 and first.chunks[0].token_count > 0
    assert len(first.content_sha256) == 64
    assert 0 < sandbox.peak_rss_bytes < SandboxLimits().memory_bytes


def test_a_pool_chunks_on_two_workers_and_yields_documents_in_order_with_their_own_outcome(folder, chunking):
    names = [f"doc{i:02d}.txt" for i in range(12)]
    for i, name in enumerate(names):
        (folder / name).write_text(f"Document number {i} talks about topic {i * 7}.\n\nIt has two paragraphs.\n")
    (folder / "line.txt").write_bytes(single_line(8 * MiB))
    items = [*names[:5], "line.txt", "gone.txt", *names[5:]]
    outcomes = {}
    with SandboxPool(SandboxLimits(timeout_s=2), chunking, workers=2) as pool:
        order = []
        for name, future in pool.map(folder, items, lambda item: item):
            order.append(name)
            try:
                outcomes[name] = future.result()
            except (UnreadableDocument, FileNotFoundError) as exc:
                outcomes[name] = exc
        # two workers, and one more after the time limit stopped one of them
        assert pool.workers_started == 3
        pids = {sandbox._worker.process.pid for sandbox in pool.sandboxes if sandbox._worker}
        assert len(pids) == 2
    assert order == items
    for i, name in enumerate(names):
        assert f"topic {i * 7}." in outcomes[name].chunks[0].text
    assert isinstance(outcomes["line.txt"], UnreadableDocument) and outcomes["line.txt"].code == ReasonCode.TIME_LIMIT
    assert isinstance(outcomes["gone.txt"], FileNotFoundError)
    assert 0 < pool.peak_rss_bytes < SandboxLimits().memory_bytes
    assert all(sandbox._worker is None for sandbox in pool.sandboxes)  # stopped on exit


def test_pool_workers_starting_at_once_leave_the_parents_main_module_in_place(folder, chunking):
    main = sys.modules["__main__"]
    for round_ in range(3):
        with SandboxPool(SandboxLimits(), chunking, workers=2) as pool:
            results = [future.result() for _, future in pool.map(folder, ["good.txt"] * 4, lambda item: item)]
            assert pool.workers_started == 2, f"round {round_}"
        assert sys.modules["__main__"] is main, f"round {round_}: __main__ replaced"
        assert all(result.chunks for result in results)


def test_closing_a_pool_mid_map_cancels_what_has_not_started_and_stops_every_worker(folder, chunking):
    names = [f"doc{i}.txt" for i in range(8)]
    for name in names:
        (folder / name).write_text(f"{name} says something.\n")
    with SandboxPool(SandboxLimits(), chunking, workers=2) as pool:
        documents = pool.map(folder, names, lambda item: item)
        first, future = next(documents)
        assert first == "doc0.txt" and future.result().chunks
    # At most workers + 1 documents were ever handed out; the rest were never read.
    assert pool.workers_started == 2
    assert all(sandbox._worker is None for sandbox in pool.sandboxes)
    with pytest.raises(RuntimeError):
        pool._executor.submit(print)


def test_without_chunking_the_text_is_returned(folder):
    with ExtractionSandbox() as sandbox:
        result = sandbox.run(folder, "good.txt")
    assert result.chunks is None
    assert result.text == "The quarterly report is ready.\n\nRevenue grew by twelve percent."


def test_a_missing_file_raises_file_not_found(folder):
    with ExtractionSandbox() as sandbox, pytest.raises(FileNotFoundError):
        sandbox.run(folder, "gone.txt")


# --- limits --------------------------------------------------------------------------------------------


def test_a_single_line_that_cannot_be_chunked_in_time_is_stopped_and_the_next_gets_a_fresh_worker(folder, chunking):
    (folder / "line.txt").write_bytes(single_line(8 * MiB))
    with ExtractionSandbox(SandboxLimits(timeout_s=2), chunking) as sandbox:
        started = time.monotonic()
        error = refused(sandbox, folder, "line.txt")
        elapsed = time.monotonic() - started
        assert sandbox.run(folder, "good.txt").chunks  # a fresh worker
        assert sandbox.workers_started == 2
    assert error.code == ReasonCode.TIME_LIMIT and "2 s" in error.reason
    assert error.limits == {"timeout_s": 2}  # the limit it failed under: a larger one deserves another try
    assert elapsed < 10


def test_the_cpu_limit_stops_a_busy_worker(folder, chunking):
    (folder / "line.txt").write_bytes(single_line(8 * MiB))
    with ExtractionSandbox(SandboxLimits(timeout_s=60, cpu_seconds=1), chunking) as sandbox:
        error = refused(sandbox, folder, "line.txt")
        assert sandbox.run(folder, "good.txt").chunks
    assert error.code == ReasonCode.TIME_LIMIT and "CPU" in error.reason
    assert error.limits == {"cpu_seconds": 1}


def test_a_pdf_bomb_past_the_parser_limit_is_refused_without_inflating(folder):
    (folder / "bomb.pdf").write_bytes(bomb_pdf(2 * 1024 * MiB))  # 2 GiB inflated, ~2 MB on disk
    assert (folder / "bomb.pdf").stat().st_size < 3 * MiB
    with ExtractionSandbox() as sandbox:
        error = refused(sandbox, folder, "bomb.pdf")
    assert error.code == ReasonCode.DECOMPRESSION_LIMIT
    assert error.limits is None  # the content is at fault: no setting makes it readable
    assert sandbox.peak_rss_bytes < 512 * MiB  # far below the 2 GiB the stream would need


def test_a_pdf_bomb_spread_over_pages_hits_the_memory_limit(folder):
    # Each stream stays under pypdf's 75 MB limit; together they inflate to ~1 GB.
    (folder / "pages.pdf").write_bytes(bomb_pdf(70 * MiB, pages=15))
    limits = SandboxLimits(memory_bytes=384 * MiB)
    with ExtractionSandbox(limits) as sandbox:
        error = refused(sandbox, folder, "pages.pdf")
        assert sandbox.run(folder, "good.txt").text  # a fresh worker after the limit
        assert sandbox.workers_started == 2
    assert error.code == ReasonCode.MEMORY_LIMIT and "384 MiB" in error.reason
    assert error.limits == {"memory_mb": 384}
    assert sandbox.peak_rss_bytes < limits.memory_bytes


def test_deeply_nested_html_is_extracted_or_refused_never_crashes(folder):
    depth = 100_000
    (folder / "deep.html").write_bytes(b"<div>" * depth + SECRET.encode() + b" deep text" + b"</div>" * depth)
    with ExtractionSandbox(SandboxLimits(timeout_s=30)) as sandbox:
        try:
            result = sandbox.run(folder, "deep.html")
        except UnreadableDocument as error:
            assert error.code in {ReasonCode.TOO_DEEPLY_NESTED, ReasonCode.TIME_LIMIT, ReasonCode.MEMORY_LIMIT}
        else:
            assert "deep text" in result.text
        assert sandbox.run(folder, "good.txt").text


@pytest.mark.parametrize(("sent", "verdict"), [(signal.SIGKILL, None), (signal.SIGTERM, None),
                                               (signal.SIGSEGV, ReasonCode.CRASHED)])
def test_a_worker_killed_from_outside_mid_document_gives_no_verdict_and_a_crash_counts_under_the_memory_limit(
        folder, chunking, sent, verdict):
    """SIGKILL is what the out-of-memory killer sends: that says nothing of the document, unlike a crash."""
    (folder / "line.txt").write_bytes(single_line(8 * MiB))  # keeps the worker busy for seconds
    with ExtractionSandbox(SandboxLimits(timeout_s=30), chunking) as sandbox:
        sandbox.run(folder, "good.txt")
        pid = sandbox._worker.process.pid
        threading.Timer(0.5, os.kill, (pid, sent)).start()
        with pytest.raises((ExtractionUnavailable, UnreadableDocument)) as info:
            sandbox.run(folder, "line.txt")
        assert sandbox.run(folder, "good.txt").chunks  # a fresh worker
    if verdict is None:
        assert isinstance(info.value, ExtractionUnavailable) and signal.Signals(sent).name in str(info.value)
    else:
        assert info.value.code == verdict and info.value.limits == {"memory_mb": SandboxLimits().memory_bytes // MiB}


def test_a_broken_pipe_or_a_worker_that_does_not_start_gives_no_verdict(folder, chunking, monkeypatch):
    main = sys.modules["__main__"]
    with ExtractionSandbox(SandboxLimits(), chunking) as sandbox:
        sandbox.run(folder, "good.txt")
        # The pipe to the idle worker breaks (as when it dies between two documents).
        socket.socket(fileno=os.dup(sandbox._worker.conn.fileno())).shutdown(socket.SHUT_WR)
        with pytest.raises(ExtractionUnavailable, match="pipe"):
            sandbox.run(folder, "good.txt")
        for fault in ("extract:fork=raise", "extract:worker-start=kill"):
            monkeypatch.setenv("INGEST_FAULTS", fault)
            with pytest.raises(WorkerStartFailed, match="could not be started|did not start"):
                sandbox.run(folder, "good.txt")
        monkeypatch.setenv("INGEST_FAULTS", "extract:document=kill")
        with pytest.raises(ExtractionUnavailable, match="SIGKILL"):
            sandbox.run(folder, "good.txt")
        monkeypatch.delenv("INGEST_FAULTS")
        assert sandbox.run(folder, "good.txt").chunks
    assert sys.modules["__main__"] is main  # put back after the failed start


# --- what the worker refuses to open -------------------------------------------------------------------


def test_a_too_large_file_is_refused_before_it_is_read(folder):
    (folder / "big.txt").write_bytes(single_line(4096))
    with ExtractionSandbox(SandboxLimits(max_document_bytes=1000)) as sandbox:
        error = refused(sandbox, folder, "big.txt")
    assert error.code == ReasonCode.TOO_LARGE and "4096" in error.reason
    assert error.limits == {"max_document_bytes": 1000}


def test_a_symlink_is_never_followed(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text(f"{SECRET} outside the upload\n")
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    with ExtractionSandbox() as sandbox:
        for name in ("link.txt", "linked-folder/secret.txt"):
            assert refused(sandbox, folder, name).code == ReasonCode.SYMLINK


def test_a_fifo_is_refused_without_hanging(folder):
    os.mkfifo(folder / "pipe.txt")
    with ExtractionSandbox(SandboxLimits(timeout_s=10)) as sandbox:
        assert refused(sandbox, folder, "pipe.txt").code == ReasonCode.SPECIAL_FILE


def test_a_worker_starts_from_a_script_without_a_main_guard(folder, tmp_path):
    """spawn would import the caller's __main__ again in the worker: from `python -c` that fails, and an unguarded
    script would run again inside the worker. The worker must start without it, and the script run only once."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from ingest_pipeline.core.sandbox import ExtractionSandbox\n"
        f"Path({str(tmp_path / 'runs.log')!r}).open('a').write('run\\n')\n"
        "with ExtractionSandbox() as sandbox:\n"
        f"    print(sandbox.run(Path({str(folder)!r}), 'good.txt').text)\n"
    )
    for command in ([sys.executable, str(script)], [sys.executable, "-c", script.read_text()]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "twelve percent" in result.stdout
    assert (tmp_path / "runs.log").read_text() == "run\nrun\n"  # once per command, never in the worker
