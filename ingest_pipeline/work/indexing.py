"""Moves a tenant's embedded chunks from the Postgres cold copy into its CyborgDB index."""

from __future__ import annotations

import gc
import logging
import random
import time
from contextlib import contextmanager

from ingest_pipeline.core.crypto import VectorEncryptor
from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.stores.ledger import Chunk, Ledger, TenantSession
from ingest_pipeline.stores.tenant_index import (
    LAYOUT_VECTOR_ONLY,
    TEXT_FIELD,
    CyborgIndexes,
    IndexUnavailable,
    TenantIndex,
)

log = logging.getLogger(__name__)


WRITTEN_SAMPLE = 128  # ids of a run's upserts and of its deletes kept for the asset checks


class IdSample:
    """A uniform random sample of at most `size` of the ids seen (reservoir sampling), in bounded memory."""

    def __init__(self, size: int = WRITTEN_SAMPLE):
        self.size = size
        self.seen = 0
        self.ids: list[str] = []
        self._rng = random.Random()

    def add(self, ids: list[str]) -> None:
        for chunk in ids:
            self.seen += 1
            if len(self.ids) < self.size:
                self.ids.append(chunk)
            else:
                slot = self._rng.randrange(self.seen)
                if slot < self.size:
                    self.ids[slot] = chunk


def filter_metadata(doc_name: str, partition_month: str, doc_format: str | None = None) -> dict:
    """An index item's fields for search filters evaluated inside the index: `doc_name`; `name_prefixes`, the
    name's folder prefixes ("a/", "a/b/" for "a/b/c.pdf": a prefix filter is a match on this list, since
    CyborgDB's index-side operators have no string prefix); `month`, the upload month "YYYY-MM", and
    `month_key`, the same as the number YYYYMM (range operators take numbers only); `format`, what the
    document's text was extracted as (core.formats.DOCUMENT_FORMATS), left out when not known (a document
    chunked before formats were recorded), so that no format filter matches it."""
    parts = doc_name.split("/")
    fields: dict = {"doc_name": doc_name, "name_prefixes": ["/".join(parts[:n]) + "/" for n in range(1, len(parts))]}
    if partition_month:
        month = partition_month[:7]
        fields |= {"month": month, "month_key": int(month.replace("-", ""))}
    if doc_format:
        fields["format"] = doc_format
    return fields


def open_live_index(ledger: Ledger, indexes: CyborgIndexes, keys) -> TenantIndex | None:
    """The generation of the tenant's index that search reads (None before its first write)."""
    with ledger.connect() as conn:
        live, _, _ = ledger.tenants.generations(conn, keys.tenant_id)
    return indexes.open(keys, generation=live)


class IndexWriter:
    """The one writer of a tenant's index, on a session that holds the tenant's lock.

    Every write to CyborgDB is fenced: the session proves it still holds the lock just before it.
    While a rebuild is under way, upserts and deletes go to the live index and to the one being
    rebuilt, so the rebuilt index misses nothing that happened between its attempts.
    """

    def __init__(
        self, ledger: Ledger, indexes: CyborgIndexes, keyring, session: TenantSession, batch_size: int = 32,
    ):
        self.ledger = ledger
        self.indexes = indexes
        self.keyring = keyring
        self.session = session
        self.tenant_id = session.tenant_id
        self.batch_size = batch_size
        if session.keys is None:
            session.keys = keyring.keyset(self.tenant_id, session.conn)
        self._keys = session.keys.keys()
        self._opened: dict[int, TenantIndex | None] = {}
        # What remove_stale and upsert_embedded wrote: the asset checks verify these ids.
        self.upserted = IdSample()
        self.removed = IdSample()

    @property
    def conn(self):
        return self.session.conn

    def close(self) -> None:
        """Let go of the indexes opened: an embedded index stays locked to this process while it is held open,
        so do this before another process is to write it (before the tenant's lock is let go)."""
        self._opened.clear()
        gc.collect()  # the engine's store is released when its last reference goes

    def _encryptor(self, key_version: int) -> VectorEncryptor:
        return self.session.keys.encryptor(key_version)

    def _generations(self) -> list[int]:
        live, rebuilding, _ = self.ledger.tenants.generations(self.conn, self.tenant_id)
        return [live] if rebuilding is None else [live, rebuilding]

    def index(self, generation: int | None = None, dimension: int | None = None) -> TenantIndex | None:
        if generation is None:
            generation = self._generations()[0]
        index = self._opened.get(generation)
        if index is None:
            index = self.indexes.open(self._keys, dimension=dimension, create=dimension is not None,
                                      generation=generation)
            self._opened[generation] = index
        elif dimension:
            index.check_dimension(dimension)
        return index

    def items(self, rows: list[Chunk]) -> list[dict]:
        """CyborgDB items from ledger rows: the vector and the text are decrypted here, in memory only, and
        CyborgDB encrypts them under the tenant's index key (the text as the full-text field `TEXT_FIELD`; the
        sealed text stays in `contents`). The metadata also carries the fields search filters on inside the
        index (`filter_metadata`)."""
        items = []
        for row in rows:
            encryptor = self._encryptor(row.key_version)
            metadata = {"doc_id": row.doc_id, "tenant_id": self.tenant_id, "chunk_sequence": row.sequence,
                        **filter_metadata(row.doc_name, row.partition_month, row.format),
                        TEXT_FIELD: encryptor.decrypt_text(row.chunk_id, row.text_ciphertext, row.text_mac,
                                                           row.seal_format)}
            items.append({
                "id": row.chunk_id,
                "vector": encryptor.decrypt_vector(row.chunk_id, row.embedding_ciphertext, row.text_mac,
                                                   row.seal_format),
                "metadata": metadata,
                "contents": bytes(row.text_ciphertext),
            })
        return items

    @contextmanager
    def _writing(self):
        """Fence a write, and keep the lock past the end of a call that timed out but may still write."""
        self.session.fence()
        try:
            yield
        except IndexUnavailable as exc:
            if exc.pending_call is not None:
                self.session.pending_calls.append(exc.pending_call)
            raise

    def _upsert(self, items: list[dict], generations: list[int]) -> None:
        with self._writing():
            for generation in generations:
                index = self.index(generation, dimension=len(items[0]["vector"]))
                if index.layout == LAYOUT_VECTOR_ONLY:  # no full-text field: the text would only be a filter value
                    index.upsert([{**item, "metadata": {k: v for k, v in item["metadata"].items()
                                                        if k != TEXT_FIELD}} for item in items])
                else:
                    index.upsert(items)

    def upsert_rows(self, rows: list[Chunk], generations: list[int] | None = None) -> None:
        """Upsert ledger rows (decrypted in memory only) into `generations`, by default every one written to.

        A generation whose index does not exist is created.
        """
        if rows:
            self._upsert(self.items(rows), generations or self._generations())

    def delete_ids(self, ids: list[str], generations: list[int] | None = None) -> None:
        """Delete vectors by id from `generations`, by default every one written to; an absent id is a no-op."""
        if not ids:
            return
        with self._writing():
            for generation in generations or self._generations():
                index = self.index(generation)
                if index is not None:
                    index.delete(ids)

    def remove_stale(self, month: str) -> int:
        removed = 0
        generations = self._generations()
        while rows := self.ledger.chunks.in_state(self.conn, self.tenant_id, month, "stale", limit=500):
            ids = [row.chunk_id for row in rows]
            self.delete_ids(ids, generations)  # deleting an id the index lacks is a no-op, so a retry is safe
            with self.conn.transaction():
                self.ledger.chunks.remove(self.conn, ids)
            removed += len(ids)
            self.removed.add(ids)
        return removed

    def upsert_embedded(self, month: str) -> tuple[int, int]:
        upserted = batches = 0
        generations = self._generations()
        while True:
            with self.conn.transaction():
                rows = self.ledger.chunks.in_state(
                    self.conn, self.tenant_id, month, "embedded", limit=self.batch_size, for_update=True
                )
                if not rows:
                    break
                # Upsert inside the transaction: if CyborgDB refuses, the batch stays 'embedded'.
                fault_point("index:before-upsert")  # test-only seams (ingest_pipeline.core.faults); no-ops otherwise
                self._upsert(self.items(rows), generations)
                self.ledger.chunks.mark_indexed(self.conn, [row.chunk_id for row in rows])
                fault_point("index:after-upsert")  # in CyborgDB, not yet committed in Postgres
            upserted += len(rows)
            batches += 1
            self.upserted.add([row.chunk_id for row in rows])
        return upserted, batches

    def rebuild(self, max_seconds: float | None = None) -> tuple[int, int | None]:
        """Fill a new generation of the index from the cold copy beside the live one, then swap.

        Search keeps reading the live index until the swap. Progress is committed after every batch,
        so an interrupted rebuild resumes after the last chunk written. With `max_seconds`, it stops after the
        batch that ran past them, before the swap: the caller lets go of the tenant's lock, so that ingests can
        write (to both generations), and calls it again. Returns (chunks written by this call, the new
        generation, or None when it stopped before the swap).
        """
        started = time.monotonic()
        live, generation, cursor = self.ledger.tenants.generations(self.conn, self.tenant_id)
        if generation is None:
            with self.conn.transaction():
                generation = self.ledger.tenants.start_rebuild(self.conn, self.tenant_id)
            if self.indexes.exists(self.tenant_id, generation):  # left by a rebuild abandoned before it recorded
                self.session.fence()
                self.indexes.drop(self._keys, generation)
        written = 0
        while batch := self.ledger.chunks.with_embeddings(self.conn, self.tenant_id, cursor, self.batch_size):
            with self.conn.transaction():
                self._upsert(self.items(batch), [generation])
                cursor = batch[-1].chunk_id
                self.ledger.tenants.advance_rebuild(self.conn, self.tenant_id, cursor)
            written += len(batch)
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                return written, None
        # Between interrupted attempts an ingest may have changed chunks the cursor had passed and stopped before
        # indexing them (now 'chunked' or 'embedded'), or left stale rows: bring the new generation up to the
        # ledger (ingest indexes the 'chunked' ones once embedded), then compare ids.
        by_state = self.ledger.chunks.ids_by_state(self.conn, self.tenant_id)
        stale = sorted(by_state["stale"] | by_state["chunked"])
        for start in range(0, len(stale), 500):
            self.delete_ids(stale[start:start + 500], [generation])
        embedded = sorted(by_state["embedded"])
        for start in range(0, len(embedded), self.batch_size):
            with self.conn.transaction():
                rows = self.ledger.chunks.by_id(self.conn, self.tenant_id, embedded[start:start + self.batch_size],
                                                "embedded")
                self.upsert_rows(rows, [generation])
        built = self.index(generation)
        expected = by_state["embedded"] | by_state["indexed"]
        actual = built.list_ids() if built is not None else set()
        if actual != expected:
            raise IndexUnavailable(
                f"rebuilt index of tenant {self.tenant_id!r} differs from the ledger ({len(expected - actual)} "
                f"missing, {len(actual - expected)} unknown); not swapped"
            )
        self.session.fence()
        with self.conn.transaction():
            self.ledger.tenants.finish_rebuild(self.conn, self.tenant_id, generation, built.layout)
        self._opened.pop(live, None)
        try:
            self.indexes.drop(self._keys, live)
        except IndexUnavailable as exc:  # the swap is done; a leftover old index is harmless
            log.warning("could not drop the replaced index of tenant %s: %s", self.tenant_id, exc)
        return written, generation

    def train_if_due(self, threshold: int, vectors: int) -> bool:
        """Train the live embedded index once it holds `threshold` vectors and is not trained yet (the service
        trains by itself). True when it trained now."""
        index = self.index()
        if index is None or index.trains_itself or vectors < threshold or index.is_trained():
            return False
        self.session.fence()
        index.train()
        return True

    def live_layout(self) -> int:
        """The layout of the live index (read from the index itself; the ledger's record when it does not exist
        yet), and the ledger's record brought in line with it: a tenant registered before the record was kept may
        have had its first index created in the current layout."""
        recorded = self.ledger.tenants.index_layout(self.conn, self.tenant_id)
        index = self.index()
        if index is None or index.layout == recorded:
            return recorded
        with self.conn.transaction():
            self.ledger.tenants.set_index_layout(self.conn, self.tenant_id, index.layout)
        return index.layout

    def count(self) -> int:
        index = self.index()
        return index.count() if index is not None else 0
