"""Tenants: registration and embedding model, the erasure tombstone, the tenant locks, index generations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from ingest_pipeline.stores import locks
from ingest_pipeline.stores.ledger.connection import Database
from ingest_pipeline.stores.ledger.rows import Erasure, IndexGenerations, TenantStatus


class TenantKeyMismatch(ValueError):
    """The tenant's data was written under another master key."""


class EmbeddingModelMismatch(ValueError):
    """The tenant's embeddings were made by another model."""


class TenantBusy(RuntimeError):
    """Another writer held the tenant's lock for longer than the lock wait allows. Retryable."""


class TenantLockLost(RuntimeError):
    """The writer no longer holds its tenant's lock (its connection dropped). Retryable: nothing more is written."""


def erasure_message(tenant_id: str, completed_at: datetime | None) -> str:
    """What a writer or reader says of a tombstoned tenant (names the tenant and the date, nothing else);
    `completed_at` is None while the erasure is under way."""
    if completed_at is None:
        return (f"tenant {tenant_id!r} is being erased: run `ingest-pipeline erase-tenant --tenant {tenant_id} --yes` "
                "again to finish")
    return (f"tenant {tenant_id!r} was erased on {completed_at:%Y-%m-%d %H:%M} UTC; nothing is written for "
            f"it until `ingest-pipeline readmit-tenant --tenant {tenant_id} --yes` re-admits it")


class TenantSession:
    """A writer's connection that holds the tenant's advisory lock itself.

    The lock lives and dies with this connection, so every Postgres write on it is fenced by
    construction. Writes elsewhere (CyborgDB) call `fence()` first: it fails once the connection,
    and with it the lock, is gone, before anything more is written.
    """

    def __init__(self, conn: psycopg.Connection, tenant_id: str):
        self.conn = conn
        self.tenant_id = tenant_id
        # Calls to CyborgDB that timed out but may still write: the lock is kept until they end.
        self.pending_calls: list[threading.Thread] = []
        # The tenant's keys (a keystore.TenantKeySet), opened on this connection under the lock.
        self.keys = None

    def wait_for_pending_calls(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for call in self.pending_calls:
            call.join(max(0.0, deadline - time.monotonic()))

    def fence(self) -> None:
        try:
            row = self.conn.execute(
                "SELECT count(*) AS held FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid = %s::oid AND objid = hashtext(%s)::oid AND objsubid = 2",
                (locks.TENANT.classid, self.tenant_id),
            ).fetchone()
        except psycopg.Error as exc:
            raise TenantLockLost(
                f"lost the writer lock of tenant {self.tenant_id!r} ({type(exc).__name__}); stopped before writing"
            ) from None
        if not row["held"]:
            raise TenantLockLost(f"the writer lock of tenant {self.tenant_id!r} is no longer held; stopped")


class TenantLocks:
    """The tenant locks (`locks.TENANT`): one writer per tenant (exclusive), readers that exclude it (shared)."""

    def __init__(self, db: Database):
        self.db = db

    def _lock(self, conn: psycopg.Connection, tenant_id: str, shared: bool) -> None:
        """Take the tenant's advisory lock on `conn` (shared: readers; exclusive: its one writer), waiting at most
        `lock_wait_s`; TenantBusy when a writer holds it longer."""
        self.db.set_timeouts(conn, self.db.lock_wait_s)
        try:
            conn.execute(*locks.TENANT.call("pg_advisory_lock_shared" if shared else "pg_advisory_lock", tenant_id))
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            raise TenantBusy(
                f"tenant {tenant_id!r} is being written by another run for more than {self.db.lock_wait_s:.0f} s"
            ) from None
        self.db.set_timeouts(conn, self.db.statement_timeout_s)

    @contextmanager
    def writer(self, tenant_id: str) -> Iterator[TenantSession]:
        """The tenant's one writer: a connection holding the tenant's advisory lock, waited for at most
        `lock_wait_s`. One writer per tenant ledger and index at a time, whoever starts the run."""
        with self.db.connect() as conn:
            self._lock(conn, tenant_id, shared=False)
            session = TenantSession(conn, tenant_id)
            try:
                yield session
            finally:
                session.wait_for_pending_calls(self.db.lock_wait_s)
                # Closing the connection releases the lock anyway; unlocking first just says so sooner.
                if not conn.closed and not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute(*locks.TENANT.call("pg_advisory_unlock", tenant_id))

    @contextmanager
    def reader(self, tenant_id: str) -> Iterator[psycopg.Connection]:
        """A connection holding the tenant's lock in shared mode, waited for at most `lock_wait_s`: no writer
        (they hold it exclusively) changes the tenant's ledger or index while it is held, and readers do not
        block each other. For reads that must not overlap a write (an embedded index read by one process
        while another writes it), and that compare the ledger with the index."""
        with self.db.connect() as conn:
            self._lock(conn, tenant_id, shared=True)
            try:
                yield conn
            finally:
                if not conn.closed and not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute(*locks.TENANT.call("pg_advisory_unlock_shared", tenant_id))

    @contextmanager
    def index_wanted(self, tenant_id: str) -> Iterator[None]:
        """Says, for as long as it is held, that this process wants the tenant's embedded index (INDEX_WANTED,
        shared: it never waits): a process that keeps the index open (the search service) lets go of it."""
        with self.db.connect() as conn:
            conn.execute(*locks.INDEX_WANTED.call("pg_advisory_lock_shared", tenant_id))
            yield


class Tenants:
    """Tenants: their registration and embedding model, their erasure tombstones, their index generations."""

    def __init__(self, db: Database):
        self.db = db

    # ---- registration and embedding model ------------------------------------------------------

    def verify_embedding_model(
        self, conn: psycopg.Connection, tenant_id: str, model_id: str, legacy_model_id: str | None = None
    ) -> None:
        """Record the model of the tenant's first embeddings; afterwards refuse any other model.

        A tenant recorded under the same model's legacy fingerprint is upgraded to the current one.
        """
        if legacy_model_id:
            conn.execute(
                "UPDATE ingest.tenants SET embedding_model = %s WHERE tenant_id = %s AND embedding_model = %s",
                (model_id, tenant_id, legacy_model_id),
            )
        row = conn.execute(
            "UPDATE ingest.tenants SET embedding_model = coalesce(embedding_model, %s) WHERE tenant_id = %s"
            " RETURNING embedding_model",
            (model_id, tenant_id),
        ).fetchone()
        if row is None or row["embedding_model"] != model_id:
            raise EmbeddingModelMismatch(
                f"tenant {tenant_id!r} was embedded with model {row and row['embedding_model']}, this run uses "
                f"{model_id}: set INGEST_MODEL_PATH back (re-embedding with another model: not supported yet)"
            )

    def exist(self) -> bool:
        """Whether any tenant's data has been written (under some master key)."""
        with self.db.connect() as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM ingest.tenants) AS found").fetchone()["found"]

    def embedding_model(self, conn: psycopg.Connection, tenant_id: str) -> str | None:
        row = conn.execute("SELECT embedding_model FROM ingest.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
        return row["embedding_model"] if row else None

    def registered(self) -> list[str]:
        """Tenants with a row in `ingest.tenants`: every tenant a writer has ever written for."""
        with self.db.connect() as conn:
            rows = conn.execute("SELECT tenant_id FROM ingest.tenants ORDER BY 1").fetchall()
        return [row["tenant_id"] for row in rows]

    def with_uploads(self) -> list[str]:
        """Tenants with an upload event."""
        with self.db.connect() as conn:
            rows = conn.execute("SELECT DISTINCT tenant_id FROM ingest.uploads ORDER BY 1").fetchall()
        return [row["tenant_id"] for row in rows]

    def status(self, tenant_id: str) -> TenantStatus:
        """The tenant's documents and chunks by state, and every embedding computed for it."""
        with self.db.connect() as conn:
            docs = conn.execute(
                "SELECT count(*) FILTER (WHERE status <> 'deleted') AS documents,"
                " count(*) FILTER (WHERE status = 'quarantined') AS quarantined,"
                " count(*) FILTER (WHERE status = 'registered') AS pending_documents"
                " FROM ingest.documents WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchone()
            chunks = conn.execute(
                "SELECT count(*) FILTER (WHERE state <> 'stale') AS chunks,"
                " count(*) FILTER (WHERE state = 'indexed') AS indexed,"
                " count(*) FILTER (WHERE state = 'embedded' OR state = 'indexed') AS embedded"
                " FROM ingest.chunks WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchone()
            embedded_total = conn.execute(
                "SELECT coalesce(sum(chunk_count), 0)::bigint AS n FROM ingest.embedding_log WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchone()["n"]
        return TenantStatus(**docs, **chunks, embeddings_computed=int(embedded_total))

    # ---- erased tenants (a tombstone until re-admitted) -----------------------------------------

    @staticmethod
    def lock_admission(conn: psycopg.Connection, tenant_id: str, exclusive: bool = False) -> None:
        """Take the tenant's admission lock until the caller's transaction ends: shared to write the tenant's new
        rows (uploads), exclusive to record an erasure's request or lift its tombstone."""
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(*locks.ADMISSION.call(function, tenant_id))

    @staticmethod
    def erasure(conn: psycopg.Connection, tenant_id: str) -> Erasure | None:
        """The tenant's tombstone: its erasure (under way, or finished and not re-admitted since), or None."""
        with conn.cursor(row_factory=class_row(Erasure)) as cursor:
            return cursor.execute(
                "SELECT requested_at, completed_at FROM ingest.tenant_erasures WHERE tenant_id = %s"
                " AND readmitted_at IS NULL",
                (tenant_id,),
            ).fetchone()

    def erased(self) -> set[str]:
        """Every tenant with a tombstone (erased or being erased, not re-admitted)."""
        with self.db.connect() as conn:
            rows = conn.execute("SELECT tenant_id FROM ingest.tenant_erasures WHERE readmitted_at IS NULL").fetchall()
        return {row["tenant_id"] for row in rows}

    # ---- index generations (a rebuild fills a new index beside the live one, then swaps) -------

    def generations(self, conn: psycopg.Connection, tenant_id: str) -> IndexGenerations:
        """(live generation, generation being rebuilt or None, the rebuild's resume cursor)."""
        row = conn.execute(
            "SELECT index_generation, rebuild_generation, rebuild_cursor::text AS rebuild_cursor"
            " FROM ingest.tenants WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchone()
        if row is None:
            return IndexGenerations(1, None, None)
        return IndexGenerations(row["index_generation"], row["rebuild_generation"], row["rebuild_cursor"])

    def index_layout(self, conn: psycopg.Connection, tenant_id: str) -> int:
        """The layout of the tenant's live index generation (1: vectors only, 2: with the full-text field); a
        tenant without a row yet gets the current layout when its index is created."""
        row = conn.execute("SELECT index_layout FROM ingest.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
        return int(row["index_layout"]) if row is not None else 2

    def set_index_layout(self, conn: psycopg.Connection, tenant_id: str, layout: int) -> None:
        """Record the layout the live index was found to have (reconciliation reads it from the index)."""
        conn.execute("UPDATE ingest.tenants SET index_layout = %s WHERE tenant_id = %s", (layout, tenant_id))

    def start_rebuild(self, conn: psycopg.Connection, tenant_id: str) -> int:
        row = conn.execute(
            "UPDATE ingest.tenants SET rebuild_generation = index_generation + 1, rebuild_cursor = NULL"
            " WHERE tenant_id = %s RETURNING rebuild_generation",
            (tenant_id,),
        ).fetchone()
        return row["rebuild_generation"]

    def advance_rebuild(self, conn: psycopg.Connection, tenant_id: str, cursor: str) -> None:
        conn.execute("UPDATE ingest.tenants SET rebuild_cursor = %s WHERE tenant_id = %s", (cursor, tenant_id))

    def finish_rebuild(self, conn: psycopg.Connection, tenant_id: str, generation: int,
                       layout: int | None = None) -> None:
        """Make the rebuilt index the live one; every embedded chunk is in it, so all count as indexed.
        `layout` is the rebuilt index's layout (None: unchanged)."""
        conn.execute(
            "UPDATE ingest.tenants SET index_generation = %s, rebuild_generation = NULL, rebuild_cursor = NULL,"
            " index_layout = coalesce(%s, index_layout) WHERE tenant_id = %s",
            (generation, layout, tenant_id),
        )
        conn.execute(
            "UPDATE ingest.chunks SET state = 'indexed', updated_at = now()"
            " WHERE tenant_id = %s AND state = 'embedded'",
            (tenant_id,),
        )
