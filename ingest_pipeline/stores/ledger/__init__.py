"""The PostgreSQL ledger: upload log, documents, encrypted chunks, quarantine and tenants.

Every statement is parameterized; every state change happens in a transaction. Stages that change a
tenant's rows hold that tenant's advisory lock, so two runs for one tenant never interleave.

`Ledger` holds the connection helper and the tenant locks; its concerns share that helper:
`ledger.uploads`, `ledger.documents`, `ledger.chunks`, `ledger.quarantine`, `ledger.tenants`,
`ledger.api_keys` (the search service's keys).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import psycopg

from ingest_pipeline.stores.ledger.api_keys import ApiKeys
from ingest_pipeline.stores.ledger.chunks import ChunkQuery, Chunks
from ingest_pipeline.stores.ledger.connection import Database
from ingest_pipeline.stores.ledger.documents import Documents
from ingest_pipeline.stores.ledger.quarantine import Quarantine
from ingest_pipeline.stores.ledger.rows import (
    Chunk,
    ChunkToEmbed,
    ChunkWrite,
    Document,
    EmbeddingWrite,
    Erasure,
    Hit,
    IndexGenerations,
    LiveDocument,
    Partition,
    QuarantineRecord,
    Released,
    SealedEmbedding,
    TenantStatus,
    Upload,
)
from ingest_pipeline.stores.ledger.tenants import (
    EmbeddingModelMismatch,
    TenantBusy,
    TenantKeyMismatch,
    TenantLockLost,
    TenantLocks,
    Tenants,
    TenantSession,
    erasure_message,
)
from ingest_pipeline.stores.ledger.uploads import Uploads

__all__ = [
    "Chunk", "ChunkQuery", "ChunkToEmbed", "ChunkWrite", "Document", "EmbeddingModelMismatch", "EmbeddingWrite",
    "Erasure", "Hit", "IndexGenerations", "Ledger", "LiveDocument", "Partition", "QuarantineRecord", "Released",
    "SealedEmbedding", "TenantBusy", "TenantKeyMismatch", "TenantLockLost", "TenantSession", "TenantStatus",
    "Upload", "erasure_message", "sha256_file",
]


class Ledger(Database):
    """The ledger: its connections and migrations (a `Database`), its tenant locks, and its concerns."""

    def __init__(
        self, dsn: str, *, statement_timeout_s: float = 120, lock_wait_s: float = 300,
        idle_in_transaction_s: float = 300, connect_timeout_s: int = 15,
    ):
        super().__init__(dsn, statement_timeout_s=statement_timeout_s, lock_wait_s=lock_wait_s,
                         idle_in_transaction_s=idle_in_transaction_s, connect_timeout_s=connect_timeout_s)
        self.uploads = Uploads(self)
        self.documents = Documents(self)
        self.chunks = Chunks(self)
        self.quarantine = Quarantine(self)
        self.tenants = Tenants(self)
        self.api_keys = ApiKeys(self)
        self._locks = TenantLocks(self)

    def tenant_writer(self, tenant_id: str) -> AbstractContextManager[TenantSession]:
        """The tenant's one writer: a connection holding the tenant's advisory lock, waited for at most
        `lock_wait_s` (TenantBusy after). One writer per tenant ledger and index at a time."""
        return self._locks.writer(tenant_id)

    def tenant_reader(self, tenant_id: str) -> AbstractContextManager[psycopg.Connection]:
        """A connection holding the tenant's lock in shared mode (readers do not block each other; no writer
        changes the tenant while it is held), waited for at most `lock_wait_s`."""
        return self._locks.reader(tenant_id)

    def index_wanted(self, tenant_id: str) -> AbstractContextManager[None]:
        """Held while this process uses the tenant's embedded index outside the tenant lock: a process that keeps
        it open (the search service) lets go (`TenantLocks.index_wanted`)."""
        return self._locks.index_wanted(tenant_id)


def sha256_file(path) -> str:
    """The file's SHA-256, read without following a symbolic link and without blocking on a FIFO.

    Raises landing.RefusedFile (code symlink or special-file, naming the file) for anything that is not a
    regular file when opened, whatever it was when a folder was listed.
    """
    from ingest_pipeline.stores.landing_zone import hash_file

    return hash_file(path)[1]


