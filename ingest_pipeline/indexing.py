"""Moves a tenant's embedded chunks from the Postgres cold copy into its CyborgDB index."""

from __future__ import annotations

import psycopg

from ingest_pipeline.core.crypto import VectorEncryptor
from ingest_pipeline.ledger import Ledger
from ingest_pipeline.vector_index import CyborgIndexes, TenantIndex


class IndexWriter:
    """The one writer of a tenant's index. Callers hold the tenant's lock."""

    def __init__(self, ledger: Ledger, indexes: CyborgIndexes, keyring, tenant_id: str, batch_size: int = 32):
        self.ledger = ledger
        self.indexes = indexes
        self.keyring = keyring
        self.tenant_id = tenant_id
        self.batch_size = batch_size
        self._keys = keyring.tenant_keys(tenant_id)
        self._index: TenantIndex | None = None
        self._encryptors: dict[int, VectorEncryptor] = {}

    def _encryptor(self, key_version: int) -> VectorEncryptor:
        if key_version not in self._encryptors:
            self._encryptors[key_version] = self.keyring.encryptor(self.tenant_id, key_version)
        return self._encryptors[key_version]

    def index(self, dimension: int | None = None) -> TenantIndex | None:
        if self._index is None:
            self._index = self.indexes.open(self._keys, dimension=dimension, create=dimension is not None)
        elif dimension:
            self._index.check_dimension(dimension)
        return self._index

    def items(self, rows: list[dict]) -> list[dict]:
        """CyborgDB items from ledger rows: the vector is decrypted here, in memory only."""
        items = []
        for row in rows:
            encryptor = self._encryptor(row["key_version"])
            items.append({
                "id": row["chunk_id"],
                "vector": encryptor.decrypt_vector(row["chunk_id"], row["embedding_ciphertext"]),
                "metadata": {"doc_id": row["doc_id"], "tenant_id": self.tenant_id,
                             "chunk_sequence": row["sequence"]},
                "contents": bytes(row["text_ciphertext"]),
            })
        return items

    def _upsert(self, items: list[dict]) -> None:
        index = self.index(dimension=len(items[0]["vector"]))
        index.upsert(items)

    def remove_stale(self, conn: psycopg.Connection, month: str) -> int:
        removed = 0
        while rows := self.ledger.chunks_in_state(conn, self.tenant_id, month, "stale", limit=500):
            ids = [row["chunk_id"] for row in rows]
            index = self.index()
            if index is not None:
                index.delete(ids)  # deleting an id the index lacks is a no-op, so a retry is safe
            with conn.transaction():
                self.ledger.remove_chunks(conn, ids)
            removed += len(ids)
        return removed

    def upsert_embedded(self, conn: psycopg.Connection, month: str) -> tuple[int, int]:
        upserted = batches = 0
        while True:
            with conn.transaction():
                rows = self.ledger.chunks_in_state(
                    conn, self.tenant_id, month, "embedded", limit=self.batch_size, for_update=True
                )
                if not rows:
                    break
                # Upsert inside the transaction: if CyborgDB refuses, the batch stays 'embedded'.
                self._upsert(self.items(rows))
                self.ledger.mark_indexed(conn, [row["chunk_id"] for row in rows])
            upserted += len(rows)
            batches += 1
        return upserted, batches

    def rebuild(self, conn: psycopg.Connection) -> int:
        """Drop the index and refill it from the cold copy, without re-embedding anything.

        The ledger first marks every indexed chunk pending again, so a rebuild that stops half way is
        finished by the next rebuild or ingest.
        """
        with conn.transaction():
            self.ledger.unmark_indexed(conn, self.tenant_id)
        self.indexes.drop(self._keys)
        self._index = None
        restored, after = 0, None
        while batch := self.ledger.tenant_chunks_with_embeddings(conn, self.tenant_id, after, self.batch_size):
            with conn.transaction():
                self._upsert(self.items(batch))
                self.ledger.mark_indexed(conn, [row["chunk_id"] for row in batch])
            restored += len(batch)
            after = batch[-1]["chunk_id"]
        return restored

    def count(self) -> int:
        index = self.index()
        return index.count() if index is not None else 0
