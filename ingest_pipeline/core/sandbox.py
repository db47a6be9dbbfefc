"""Extraction (and chunking) in a child process under memory, CPU and wall-clock limits.

A hostile upload can make a parser take unbounded memory (a PDF whose streams inflate to gigabytes) or time
(a 50 MB line for the splitter, markup nested 100,000 deep). Only a separate process can be bounded and
stopped safely, so `ExtractionSandbox` reads, extracts and chunks each document in a worker process started
with the standard library's 'spawn' context:

- its address space is capped with RLIMIT_AS (`memory_bytes`): an allocation past it fails in the worker
  (MemoryError), never in the step;
- each document gets `cpu_seconds` of CPU (RLIMIT_CPU, raised per document from what the worker has used)
  and `timeout_s` of wall-clock time, after which the worker is killed;
- a document refused for memory or time, or a worker that crashed, is answered with an `UnreadableDocument`
  (code memory-limit, time-limit or crashed) and the next document gets a fresh worker. A healthy worker is
  reused, so the per-document cost is one round trip over a pipe.

Every outcome is one of three kinds, so a caller can tell what is the document's fault:

- the content is at fault (corrupt, encrypted, empty, unsupported, a decompression bomb caught by the parser):
  an `UnreadableDocument` whose `limits` is None; the same bytes fail the same way under any settings;
- a limit refused it (time-limit, memory-limit, crashed under the memory limit, too-large): an
  `UnreadableDocument` whose `limits` names the limit(s) in force (`SandboxLimits.as_dict` keys), so a caller
  can try it again once a limit is larger;
- no verdict at all (the worker did not start, a fork failed, the pipe to it broke, or it was killed by a
  signal that is none of our limits, such as the out-of-memory killer's SIGKILL): `ExtractionUnavailable`;
  the document is not at fault and should be tried again later.

The worker is given the file's folder and name, never its bytes, and opens it itself without following
symbolic links (`read_document`). It returns the content hash, the format and the chunks (or the text), and
its peak resident memory. Pure Python and the standard library; knows nothing of Dagster.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import resource
import signal
import sys
import threading
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ingest_pipeline.core.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, Chunk
from ingest_pipeline.core.embedding import resolve_model_path
from ingest_pipeline.core.extraction import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    Location,
    ReasonCode,
    UnreadableDocument,
    extract_text,
    read_document,
)
from ingest_pipeline.core.faults import InjectedFault, fault_point
from ingest_pipeline.core.ocr import OcrSettings, OcrUnavailable

T = TypeVar("T")

DEFAULT_MEMORY_BYTES = 1024 * 1024 * 1024
DEFAULT_TIMEOUT_S = 60.0
_SHUTDOWN_WAIT_S = 5.0
_STARTUP_WAIT_S = 120.0
# Workers started from several threads at once (a SandboxPool) must not interleave hiding and restoring __main__.
_SPAWNING = threading.Lock()
# A worker that answered with one of these is replaced before the next document.
_REPLACE_AFTER = {ReasonCode.MEMORY_LIMIT, ReasonCode.PARSER_ERROR, ReasonCode.TOO_DEEPLY_NESTED}
# Refusals made by a limit, not by the content, and the limits (SandboxLimits.as_dict keys) they were made under.
# A native crash is taken for the memory limit: under RLIMIT_AS, that is what makes native code abort or fault.
LIMITED_BY = {
    ReasonCode.TIME_LIMIT: ("timeout_s",),
    ReasonCode.MEMORY_LIMIT: ("memory_mb",),
    ReasonCode.CRASHED: ("memory_mb",),
    ReasonCode.TOO_LARGE: ("max_document_bytes",),
    ReasonCode.TOO_MANY_PAGES: ("ocr_max_pages",),
    ReasonCode.OCR_TIME_LIMIT: ("ocr_page_timeout_s",),
}
# A worker killed by one of these was stopped from outside (the out-of-memory killer, an operator, a shutdown):
# that says nothing of the document.
_KILLED_FROM_OUTSIDE = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


class ExtractionUnavailable(RuntimeError):
    """No verdict on the document: the worker did not start, the pipe to it broke, or it was killed by a signal
    that is none of our limits (the out-of-memory killer, an operator). Not the document's fault: try it again
    later. The message names the cause, never the content."""


class OcrUnavailableError(ExtractionUnavailable):
    """The document needs OCR and this machine cannot run it (tesseract or a language pack is missing): no
    verdict on the document, which stays pending until the machine is fixed (the message says how). Unlike other
    ExtractionUnavailable causes, trying again on the same machine does not help, so it never counts towards
    quarantining the document. `code` is "ocr-unavailable"."""

    code = OcrUnavailable.code


class WorkerStartFailed(ExtractionUnavailable):
    """A worker could not be started (a fork error, or it died before it was ready): no document can be read
    until that is fixed."""


@dataclass(frozen=True)
class SandboxLimits:
    """The bounds on one document's extraction and chunking.

    memory_bytes: the worker's address-space limit (RLIMIT_AS), default 1 GiB.
    timeout_s: wall-clock time per document, default 60 s; the worker is killed when it runs out.
    cpu_seconds: CPU time per document (RLIMIT_CPU); defaults to timeout_s rounded up.
    max_document_bytes: larger files are refused as too-large before they are read.
    ocr: whether and how pages without a text layer and images are OCRed (languages, per-page time, page cap).
    """

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    cpu_seconds: int | None = None
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    ocr: OcrSettings = OcrSettings()

    @property
    def cpu_budget(self) -> int:
        return self.cpu_seconds if self.cpu_seconds is not None else max(1, math.ceil(self.timeout_s))

    def as_dict(self) -> dict[str, float]:
        """The limits by name, as a refusal's `limits` records them: timeout_s, cpu_seconds, memory_mb,
        max_document_bytes, ocr_page_timeout_s, ocr_max_pages."""
        return {"timeout_s": self.timeout_s, "cpu_seconds": self.cpu_budget,
                "memory_mb": self.memory_bytes // 2**20, "max_document_bytes": self.max_document_bytes,
                "ocr_page_timeout_s": self.ocr.page_timeout_s, "ocr_max_pages": self.ocr.max_pages}

    def refusal_limits(self, code: ReasonCode, *names: str) -> dict[str, float] | None:
        """The limits a refusal with `code` was made under (`names`, else those of LIMITED_BY), or None when
        the content is at fault."""
        names = names or LIMITED_BY.get(code, ())
        return {name: self.as_dict()[name] for name in names} or None


@dataclass(frozen=True)
class ChunkingSpec:
    """How the worker chunks extracted text: `Chunker(tokenizer_file, max_tokens, overlap_tokens)`."""

    tokenizer_file: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS

    @classmethod
    def for_model(cls, model_path: str | Path) -> ChunkingSpec:
        """Chunking with the tokenizer of the embedding model at `model_path`, as `EmbeddingModel.chunker` does."""
        return cls(str(resolve_model_path(str(model_path)) / "tokenizer.json"))


@dataclass(frozen=True)
class SandboxResult:
    """What the worker made of one document: its content hash and format, and its chunks (when a ChunkingSpec
    was given) or its text (when not)."""

    content_sha256: str
    format: str
    chunks: list[Chunk] | None = None
    text: str | None = None
    peak_rss_bytes: int = 0
    pages: tuple[Location, ...] = ()  # with the text (no ChunkingSpec): where its pages and sections start
    sections: tuple[Location, ...] = ()
    pages_ocred: int = 0


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection


@dataclass
class ExtractionSandbox:
    """Extracts (and chunks) documents one at a time in a resource-limited worker process. Use as a context
    manager, or call close(): the worker is started at the first document and stopped at the end.

    `run` returns a SandboxResult, or raises UnreadableDocument (with its code, and the limits it was refused
    under when a limit refused it), ExtractionUnavailable (no verdict: try again later) or FileNotFoundError.
    `peak_rss_bytes` is the highest peak resident memory of any worker so far; `workers_started` counts
    the workers (one, plus one after each document that hit a limit or crashed its worker).
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    chunking: ChunkingSpec | None = None
    peak_rss_bytes: int = 0
    workers_started: int = 0
    _worker: _Worker | None = None

    def __enter__(self) -> ExtractionSandbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(self, folder: str | Path, document_name: str) -> SandboxResult:
        """Read `folder/document_name` (never following a link), extract its text and chunk it, within the limits."""
        worker = self._ensure_worker()
        try:
            worker.conn.send((str(folder), document_name, self.limits.max_document_bytes, self.limits.cpu_budget,
                              self.chunking, self.limits.ocr))
        except OSError as exc:  # the worker died since it last answered
            exitcode = self._stop(kill=True)
            raise ExtractionUnavailable(f"the pipe to the extraction worker broke ({type(exc).__name__}; "
                                        f"{_describe_exit(exitcode)})") from None
        if not worker.conn.poll(self.limits.timeout_s):
            self._note_peak(_peak_rss_of(worker.process.pid))
            self._stop(kill=True)
            raise self._refused(
                document_name, f"extraction took longer than {self.limits.timeout_s:g} s (the time limit); stopped",
                ReasonCode.TIME_LIMIT, limits=("timeout_s",),
            )
        try:
            kind, payload, peak = worker.conn.recv()
        except (EOFError, OSError):
            exitcode = self._stop(kill=True)
            if exitcode == -signal.SIGXCPU:
                raise self._refused(
                    document_name, f"extraction used more than {self.limits.cpu_budget} s of CPU (the time limit); "
                    "stopped", ReasonCode.TIME_LIMIT, limits=("cpu_seconds",)) from None
            if exitcode is not None and -exitcode in _KILLED_FROM_OUTSIDE:
                raise ExtractionUnavailable(
                    f"the extraction worker was killed from outside ({_describe_exit(exitcode)}: the system's "
                    "out-of-memory killer, or an operator) while it read the document") from None
            raise self._refused(
                document_name, f"the extraction process died ({_describe_exit(exitcode)}); the memory limit is "
                f"{self.limits.memory_bytes // 2**20} MiB", ReasonCode.CRASHED) from None
        self._note_peak(peak)
        if kind == "ok":
            return SandboxResult(peak_rss_bytes=peak, **payload)
        if kind == "missing":
            raise FileNotFoundError(document_name)
        if kind == "unavailable":
            raise OcrUnavailableError(f"{document_name}: {payload}")
        code, reason, content_sha256 = payload
        if code in _REPLACE_AFTER:
            self._stop(kill=False)
        if code == ReasonCode.MEMORY_LIMIT:
            reason = f"{reason} (the limit is {self.limits.memory_bytes // 2**20} MiB)"
        raise self._refused(document_name, reason, code, content_sha256)

    def _refused(self, document_name: str, reason: str, code: ReasonCode, content_sha256: str | None = None,
                 limits: tuple[str, ...] = ()) -> UnreadableDocument:
        """A refusal, with the limits it was made under when a limit (not the content) made it."""
        refusal = UnreadableDocument(document_name, reason, code, content_sha256)
        refusal.limits = self.limits.refusal_limits(refusal.code, *limits)
        return refusal

    def close(self) -> None:
        """Stop the worker, if one is running."""
        self._stop(kill=False)

    def _note_peak(self, peak: int) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, peak)

    def _ensure_worker(self) -> _Worker:
        if self._worker is not None and self._worker.process.is_alive():
            return self._worker
        self._stop(kill=True)
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_serve, args=(theirs, self.limits.memory_bytes), name="ingest-extraction",
            # A daemonic process may not have children; otherwise the worker must not outlive its parent.
            daemon=not multiprocessing.current_process().daemon,
        )
        try:
            with _SPAWNING, _main_module_hidden():
                fault_point("extract:fork")  # test-only seam: a fork that fails (EAGAIN, ENOMEM)
                process.start()
        except (OSError, InjectedFault) as exc:
            ours.close()
            theirs.close()
            raise WorkerStartFailed(f"the extraction worker could not be started ({type(exc).__name__}: "
                                    f"{getattr(exc, 'strerror', None) or exc})") from None
        theirs.close()
        self._worker = _Worker(process, ours)
        self.workers_started += 1
        # Starting a worker (an interpreter and its imports) is not the document's time: wait until it is ready.
        try:
            ready = ours.poll(_STARTUP_WAIT_S) and ours.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            exitcode = self._stop(kill=True)
            if exitcode is not None and -exitcode in _KILLED_FROM_OUTSIDE:
                hint = "killed from outside while it started"
            else:
                hint = f"is the memory limit ({self.limits.memory_bytes // 2**20} MiB) too small to start Python?"
            raise WorkerStartFailed(f"the extraction worker did not start ({_describe_exit(exitcode)}); {hint}")
        return self._worker

    def _stop(self, kill: bool) -> int | None:
        """Stop the worker (politely, or with SIGKILL) and return its exit code."""
        worker, self._worker = self._worker, None
        if worker is None:
            return None
        if not kill:
            try:
                worker.conn.send(None)
            except OSError:
                kill = True
            else:
                worker.process.join(_SHUTDOWN_WAIT_S)
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        exitcode = worker.process.exitcode
        worker.process.close()
        return exitcode


class SandboxPool:
    """Several ExtractionSandboxes side by side, so documents are extracted and chunked on several cores at
    once, each within the same limits. `map` hands out the documents to whichever worker is free and yields
    them back in their original order, each with a Future whose `result()` is the SandboxResult or raises
    what `ExtractionSandbox.run` raised (ExtractionUnavailable once the pool is closed). At most one document
    more than there are workers is in flight or waiting to be consumed, so memory stays bounded however many
    documents there are. Use as a context manager: closing the pool cancels what has not started, waits for
    what has, then stops the workers.

    The workers share the machine, so a document's wall-clock limit is measured while its siblings run too.
    """

    def __init__(self, limits: SandboxLimits | None = None, chunking: ChunkingSpec | None = None, workers: int = 1):
        if workers < 1:
            raise ValueError(f"a sandbox pool needs at least one worker, got {workers}")
        self.limits = limits or SandboxLimits()
        self.sandboxes = [ExtractionSandbox(self.limits, chunking) for _ in range(workers)]
        self._idle: queue.SimpleQueue[ExtractionSandbox] = queue.SimpleQueue()
        for sandbox in self.sandboxes:
            self._idle.put(sandbox)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ingest-extraction")
        self._closed = threading.Event()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def peak_rss_bytes(self) -> int:
        """The highest peak resident memory of any one worker."""
        return max(sandbox.peak_rss_bytes for sandbox in self.sandboxes)

    @property
    def workers_started(self) -> int:
        return sum(sandbox.workers_started for sandbox in self.sandboxes)

    def map(self, folder: str | Path, items: Iterable[T], name_of: Callable[[T], str]) -> Iterator[
            tuple[T, Future[SandboxResult]]]:
        """Each item with the Future of its document (`folder/name_of(item)`), in the items' order."""
        window = len(self.sandboxes) + 1
        pending: deque[tuple[T, Future[SandboxResult]]] = deque()
        try:
            for item in items:
                pending.append((item, self._executor.submit(self._run, folder, name_of(item))))
                if len(pending) >= window:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for _, future in pending:
                future.cancel()

    def _run(self, folder: str | Path, document_name: str) -> SandboxResult:
        if self._closed.is_set():
            raise ExtractionUnavailable("the extraction pool is closed")
        sandbox = self._idle.get()
        try:
            return sandbox.run(folder, document_name)
        finally:
            self._idle.put(sandbox)

    def close(self) -> None:
        """Cancel documents not yet started, wait for those running, then stop the workers side by side."""
        self._closed.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        with ThreadPoolExecutor(len(self.sandboxes)) as stopper:
            list(stopper.map(ExtractionSandbox.close, self.sandboxes))


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _peak_rss_of(pid: int | str | None) -> int:
    """A live process's peak resident memory (VmHWM, Linux), or 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _own_peak_rss() -> int:
    """The worker's own peak resident memory. VmHWM first: getrusage's ru_maxrss survives exec on Linux, so in
    a spawned worker it would report the parent's memory at the fork."""
    return _peak_rss_of("self") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Hide the parent's __main__ while a worker is spawned: spawn would import it again in the worker, which
    re-runs a script without a `__main__` guard (an ingest inside the worker) and fails outright for
    `python -c` or stdin. The worker needs nothing from it."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


# ---- the worker ----------------------------------------------------------------------------------


def _serve(conn, memory_bytes: int) -> None:
    """The worker's loop: limits first, then one document per request until told to stop (None) or orphaned."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: the address-space limit holds per process
    os.environ["RAYON_NUM_THREADS"] = "1"
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a worker killed by a limit leaves no core dump
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    chunkers: dict = {}
    fault_point("extract:worker-start")  # test-only seam: a worker that dies before it is ready
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        folder, document_name, max_bytes, cpu_seconds, chunking, ocr = request
        fault_point("extract:document")  # test-only seam: a worker killed mid-document (the OOM killer's SIGKILL)
        _limit_cpu(cpu_seconds)
        try:
            payload = ("ok", _process(folder, document_name, max_bytes, chunking, chunkers, ocr))
        except UnreadableDocument as exc:
            payload = ("refused", (exc.code, exc.reason, exc.content_sha256))
        except FileNotFoundError:
            payload = ("missing", None)
        except OcrUnavailable as exc:
            payload = ("unavailable", str(exc))
        except MemoryError:
            payload = ("refused", (ReasonCode.MEMORY_LIMIT, "extraction ran out of memory", None))
        except RecursionError:
            payload = ("refused", (ReasonCode.TOO_DEEPLY_NESTED, "nested too deeply for the parser", None))
        except Exception as exc:  # a parser bug: its type is kept, never its message (it may quote the bytes)
            payload = ("refused", (ReasonCode.PARSER_ERROR, f"unreadable ({type(exc).__name__})", None))
        try:
            conn.send((*payload, _own_peak_rss()))
        except MemoryError:
            conn.send(("refused", (ReasonCode.MEMORY_LIMIT, "the extracted text does not fit in memory", None),
                       _own_peak_rss()))


def _limit_cpu(seconds: int) -> None:
    """Allow `seconds` more CPU from now: RLIMIT_CPU counts the worker's whole life, so it moves per document."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _process(folder: str, document_name: str, max_bytes: int, chunking: ChunkingSpec | None,
             chunkers: dict, ocr: OcrSettings) -> dict:
    data, content_sha256 = read_document(folder, document_name, max_bytes)
    try:
        extracted = extract_text(document_name, data, max_bytes, ocr)
        del data
        found = {"content_sha256": content_sha256, "format": extracted.format, "pages_ocred": extracted.pages_ocred}
        if chunking is None:
            return {**found, "text": extracted.text, "pages": extracted.pages, "sections": extracted.sections}
        chunker = chunkers.get(chunking)
        if chunker is None:
            from ingest_pipeline.core.chunking import Chunker  # the tokenizer loads at the first document

            chunker = chunkers[chunking] = Chunker(chunking.tokenizer_file, chunking.max_tokens,
                                                   chunking.overlap_tokens)
        chunks = chunker.split_extracted(extracted)
        return {**found, "chunks": chunks}
    except OcrUnavailable:
        raise  # the machine cannot OCR: no verdict on the document
    except UnreadableDocument as exc:
        exc.content_sha256 = content_sha256
        raise
    except MemoryError:
        raise UnreadableDocument(document_name, "extraction ran out of memory", ReasonCode.MEMORY_LIMIT,
                                 content_sha256) from None
    except RecursionError:
        raise UnreadableDocument(document_name, "nested too deeply for the parser", ReasonCode.TOO_DEEPLY_NESTED,
                                 content_sha256) from None
    except Exception as exc:
        raise UnreadableDocument(document_name, f"unreadable ({type(exc).__name__})", ReasonCode.PARSER_ERROR,
                                 content_sha256) from None
