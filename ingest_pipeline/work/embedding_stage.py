"""The embedding stage as a bounded pipeline around the model, so the model never waits for the ledger.

Three threads, two bounded queues:

    reader (own connection)  ->  [texts]  ->  model (caller's thread)  ->  [vectors]  ->  writer (locked session)
    fetch pending chunks,                     encode a group of 256 chunks                seal each vector,
    decrypt, sort by tokens                   in batches of 32, in order                  commit the group

While the model encodes one group, the reader prepares the next and the writer seals and commits the
previous one; PyTorch releases the GIL while it computes, so the Python work around it overlaps. Each
queue holds at most `depth` groups, so memory stays bounded whatever the partition's size. The writer
commits on the tenant's locked session (every write fenced by construction); the reader only reads, on a
connection of its own, and pages by chunk id, so it never sees a chunk twice. A failure in any thread
stops the others and is raised in the caller's: the step retries and resumes after the last commit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.stores.ledger import EmbeddingWrite, Ledger, TenantSession

_END = object()
_POLL_S = 0.2


@dataclass
class EmbeddingStats:
    embedded: int = 0
    batches: int = 0
    embed_seconds: float = 0.0  # the model computing
    model_waited_seconds: float = 0.0  # the model idle, waiting for the reader (decrypting, fetching)
    writer_backlog_seconds: float = 0.0  # the model idle, waiting for the writer (sealing, committing)


class _Stopped(Exception):
    pass


class _Pipe:
    """A bounded queue whose blocking calls give up when the pipeline is stopping."""

    def __init__(self, depth: int, stop: threading.Event):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop

    def put(self, item) -> float:
        started = time.perf_counter()
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=_POLL_S)
                return time.perf_counter() - started
            except queue.Full:
                continue

    def get(self) -> tuple[object, float]:
        started = time.perf_counter()
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return self._queue.get(timeout=_POLL_S), time.perf_counter() - started
            except queue.Empty:
                continue


def embed_pending(
    ledger: Ledger, session: TenantSession, embedder, month: str, *, fetch: int = 1024, commit_every: int = 256,
    depth: int = 2, on_progress: Callable[[int], None] | None = None,
) -> EmbeddingStats:
    """Embed every chunk of the partition still without an embedding, sealing and committing as it goes."""
    tenant, keys = session.tenant_id, session.keys
    stats = EmbeddingStats()
    stop = threading.Event()
    errors: list[BaseException] = []
    to_model, to_writer = _Pipe(depth, stop), _Pipe(depth, stop)

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except _Stopped:
                pass
            except BaseException as exc:  # raised again in the caller's thread
                errors.append(exc)
                stop.set()
        return run

    def read() -> None:
        with ledger.connect() as conn:
            after = None
            while rows := ledger.chunks.to_embed(conn, tenant, month, after, fetch):
                after = rows[-1].chunk_id
                texts = {row.chunk_id: keys.encryptor(row.key_version).decrypt_text(
                    row.chunk_id, row.text_ciphertext, row.text_mac, row.seal_format) for row in rows}
                # Sorted by token count and batched in that order, so each batch pads little: a batch costs as
                # much as its longest text. (`encode` alone sorts by characters, which pads more.)
                rows.sort(key=lambda row: (row.token_count or 0, len(texts[row.chunk_id])))
                for start in range(0, len(rows), commit_every):
                    group = rows[start:start + commit_every]
                    to_model.put((group, [texts[row.chunk_id] for row in group]))
        to_model.put(_END)

    def write() -> None:
        conn = session.conn
        while (item := to_writer.get()[0]) is not _END:
            group, vectors = item
            sealed = [
                EmbeddingWrite(keys.encryptor(row.key_version).encrypt_vector(
                    row.chunk_id, vector, row.text_mac, row.seal_format), row.chunk_id, row.text_mac)
                for row, vector in zip(group, vectors, strict=True)
            ]
            with conn.transaction():
                ledger.chunks.store_embeddings(conn, tenant, sealed)
                fault_point("embed:before-commit")  # test-only seams (ingest_pipeline.core.faults)
            fault_point("embed:after-commit")
            stats.embedded += len(group)
            if on_progress is not None:
                on_progress(stats.embedded)

    threads = [threading.Thread(target=guarded(read), name="embed-reader", daemon=True),
               threading.Thread(target=guarded(write), name="embed-writer", daemon=True)]
    for thread in threads:
        thread.start()

    @guarded
    def model() -> None:
        while True:
            item, waited = to_model.get()
            stats.model_waited_seconds += waited
            if item is _END:
                break
            group, texts = item
            tick = time.perf_counter()
            vectors = embedder.embed(texts, in_order=True)
            stats.embed_seconds += time.perf_counter() - tick
            stats.batches += -(-len(texts) // embedder.batch_size)
            stats.writer_backlog_seconds += to_writer.put((group, vectors))
        to_writer.put(_END)

    model()
    for thread in threads:
        while thread.is_alive():
            thread.join(_POLL_S)
            if errors:
                stop.set()
    if errors:
        raise errors[0]
    return stats
