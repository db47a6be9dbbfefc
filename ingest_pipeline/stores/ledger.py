"""The PostgreSQL ledger: upload log, documents, encrypted chunks and quarantine.

Every statement is parameterized; every state change happens in a transaction. Stages that change a
tenant's rows hold that tenant's advisory lock, so two runs for one tenant never interleave.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

_LOCK_CLASS = 0x1D6E  # namespaces this project's advisory locks
# Admission of a tenant's new rows (per tenant): shared by writers of uploads, exclusive while an erasure records its
# request or a re-admission lifts it. Migration 0009's trigger takes it too.
_ADMISSION_LOCK_CLASS = 0x1D6F
# A quarantine record `q` made under a limit smaller than the same limit in %(limits)s (a JSON object of the
# current limits by name, or NULL): the document deserves another try under the larger limit.
_UNDER_A_SMALLER_LIMIT = (
    "EXISTS (SELECT 1 FROM jsonb_each(q.limits) recorded WHERE jsonb_typeof(recorded.value) = 'number'"
    " AND recorded.value::numeric < (%(limits)s::jsonb ->> recorded.key)::numeric)"
)
_RETRYABLE_QUARANTINE = (
    "d.status = 'quarantined' AND EXISTS (SELECT 1 FROM ingest.quarantine q WHERE q.doc_id = d.doc_id"
    f" AND q.content_sha256 = d.content_sha256 AND {_UNDER_A_SMALLER_LIMIT})"
)


class TenantKeyMismatch(ValueError):
    """The tenant's data was written under another master key."""


class EmbeddingModelMismatch(ValueError):
    """The tenant's embeddings were made by another model."""


class TenantBusy(RuntimeError):
    """Another writer held the tenant's lock for longer than the lock wait allows. Retryable."""


class TenantLockLost(RuntimeError):
    """The writer no longer holds its tenant's lock (its connection dropped). Retryable: nothing more is written."""


def erasure_message(tenant_id: str, erasure: dict) -> str:
    """What a writer or reader says of a tombstoned tenant (names the tenant and the date, nothing else)."""
    if erasure["completed_at"] is None:
        return (f"tenant {tenant_id!r} is being erased: run `ingest-pipeline erase-tenant --tenant {tenant_id} --yes` "
                "again to finish")
    return (f"tenant {tenant_id!r} was erased on {erasure['completed_at']:%Y-%m-%d %H:%M} UTC; nothing is written for "
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
                (_LOCK_CLASS, self.tenant_id),
            ).fetchone()
        except psycopg.Error as exc:
            raise TenantLockLost(
                f"lost the writer lock of tenant {self.tenant_id!r} ({type(exc).__name__}); stopped before writing"
            ) from None
        if not row["held"]:
            raise TenantLockLost(f"the writer lock of tenant {self.tenant_id!r} is no longer held; stopped")


@dataclass(frozen=True)
class Upload:
    upload_id: int
    tenant_id: str
    doc_id: str
    doc_name: str
    content_sha256: str | None
    is_delete: bool
    partition_month: str
    size_bytes: int | None = None
    uploaded_at: datetime | None = None
    file_mtime_ns: int | None = None  # the landed file's modification time when it was hashed


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("ingest_pipeline.stores") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class Ledger:
    """A thin, explicit data-access layer over psycopg 3."""

    def __init__(
        self, dsn: str, *, statement_timeout_s: float = 120, lock_wait_s: float = 300,
        idle_in_transaction_s: float = 300, connect_timeout_s: int = 15,
    ):
        self.dsn = dsn
        self.statement_timeout_s = statement_timeout_s
        self.lock_wait_s = lock_wait_s
        self.idle_in_transaction_s = idle_in_transaction_s
        self.connect_timeout_s = connect_timeout_s

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection whose `with conn.transaction()` blocks commit or roll back as a unit.

        Every statement, row-lock wait and open transaction is bounded, and TCP keepalives notice a
        dead server, so a stuck connection fails the step (which retries) instead of hanging it.
        """
        options = (
            f"-c statement_timeout={int(self.statement_timeout_s * 1000)}"
            f" -c lock_timeout={int(self.statement_timeout_s * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(self.idle_in_transaction_s * 1000)}"
        )
        with psycopg.connect(
            self.dsn, row_factory=dict_row, autocommit=True, connect_timeout=self.connect_timeout_s,
            options=options, keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
        ) as conn:
            yield conn

    def migrate(self) -> list[int]:
        """Apply pending versioned migrations (idempotent, safe from several processes at once)."""
        applied = []
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_CLASS,))
            # An index built on a large chunks table may take longer than the statement timeout of every connection.
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("CREATE SCHEMA IF NOT EXISTS ingest")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ingest.schema_migrations "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["version"] for row in conn.execute("SELECT version FROM ingest.schema_migrations")}
            for version, sql in _migrations():
                if version not in done:
                    conn.execute(sql)
                    conn.execute("INSERT INTO ingest.schema_migrations (version) VALUES (%s)", (version,))
                    applied.append(version)
        return applied

    @staticmethod
    def _set_timeouts(conn: psycopg.Connection, seconds: float) -> None:
        milliseconds = str(int(seconds * 1000))
        conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                     (milliseconds, milliseconds))

    def _lock_tenant(self, conn: psycopg.Connection, tenant_id: str, shared: bool) -> None:
        """Take the tenant's advisory lock on `conn` (shared: readers; exclusive: its one writer), waiting at most
        `lock_wait_s`; TenantBusy when a writer holds it longer."""
        self._set_timeouts(conn, self.lock_wait_s)
        function = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
        try:
            conn.execute(f"SELECT {function}(%s, hashtext(%s))", (_LOCK_CLASS, tenant_id))
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            raise TenantBusy(
                f"tenant {tenant_id!r} is being written by another run for more than {self.lock_wait_s:.0f} s"
            ) from None
        self._set_timeouts(conn, self.statement_timeout_s)

    @contextmanager
    def tenant_writer(self, tenant_id: str) -> Iterator[TenantSession]:
        """The tenant's one writer: a connection holding the tenant's advisory lock, waited for at most
        `lock_wait_s`. One writer per tenant ledger and index at a time, whoever starts the run."""
        with self.connect() as conn:
            self._lock_tenant(conn, tenant_id, shared=False)
            session = TenantSession(conn, tenant_id)
            try:
                yield session
            finally:
                session.wait_for_pending_calls(self.lock_wait_s)
                # Closing the connection releases the lock anyway; unlocking first just says so sooner.
                if not conn.closed and not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, tenant_id))

    @contextmanager
    def tenant_reader(self, tenant_id: str) -> Iterator[psycopg.Connection]:
        """A connection holding the tenant's lock in shared mode, waited for at most `lock_wait_s`: no writer
        (they hold it exclusively) changes the tenant's ledger or index while it is held, and readers do not
        block each other. For reads that must not overlap a write (an embedded index read by one process
        while another writes it), and that compare the ledger with the index."""
        with self.connect() as conn:
            self._lock_tenant(conn, tenant_id, shared=True)
            try:
                yield conn
            finally:
                if not conn.closed and not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock_shared(%s, hashtext(%s))", (_LOCK_CLASS, tenant_id))

    # ---- tenants -------------------------------------------------------------------------------

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

    def has_tenants(self) -> bool:
        """Whether any tenant's data has been written (under some master key)."""
        with self.connect() as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM ingest.tenants) AS found").fetchone()["found"]

    def embedding_model(self, conn: psycopg.Connection, tenant_id: str) -> str | None:
        row = conn.execute("SELECT embedding_model FROM ingest.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
        return row["embedding_model"] if row else None

    # ---- erased tenants (a tombstone until re-admitted) -----------------------------------------

    @staticmethod
    def lock_admission(conn: psycopg.Connection, tenant_id: str, exclusive: bool = False) -> None:
        """Take the tenant's admission lock until the caller's transaction ends: shared to write the tenant's new
        rows (uploads), exclusive to record an erasure's request or lift its tombstone."""
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(f"SELECT {function}(%s, hashtext(%s))", (_ADMISSION_LOCK_CLASS, tenant_id))

    @staticmethod
    def erasure(conn: psycopg.Connection, tenant_id: str) -> dict | None:
        """The tenant's tombstone: its erasure (under way, or finished and not re-admitted since), or None.

        `requested_at`, `completed_at` (None while under way)."""
        return conn.execute(
            "SELECT requested_at, completed_at FROM ingest.tenant_erasures WHERE tenant_id = %s"
            " AND readmitted_at IS NULL",
            (tenant_id,),
        ).fetchone()

    def erased_tenants(self) -> set[str]:
        """Every tenant with a tombstone (erased or being erased, not re-admitted)."""
        with self.connect() as conn:
            rows = conn.execute("SELECT tenant_id FROM ingest.tenant_erasures WHERE readmitted_at IS NULL").fetchall()
        return {row["tenant_id"] for row in rows}

    # ---- index generations (a rebuild fills a new index beside the live one, then swaps) -------

    def index_generations(self, conn: psycopg.Connection, tenant_id: str) -> tuple[int, int | None, str | None]:
        """(live generation, generation being rebuilt or None, the rebuild's resume cursor)."""
        row = conn.execute(
            "SELECT index_generation, rebuild_generation, rebuild_cursor::text AS rebuild_cursor"
            " FROM ingest.tenants WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchone()
        if row is None:
            return 1, None, None
        return row["index_generation"], row["rebuild_generation"], row["rebuild_cursor"]

    def start_rebuild(self, conn: psycopg.Connection, tenant_id: str) -> int:
        row = conn.execute(
            "UPDATE ingest.tenants SET rebuild_generation = index_generation + 1, rebuild_cursor = NULL"
            " WHERE tenant_id = %s RETURNING rebuild_generation",
            (tenant_id,),
        ).fetchone()
        return row["rebuild_generation"]

    def advance_rebuild(self, conn: psycopg.Connection, tenant_id: str, cursor: str) -> None:
        conn.execute("UPDATE ingest.tenants SET rebuild_cursor = %s WHERE tenant_id = %s", (cursor, tenant_id))

    def finish_rebuild(self, conn: psycopg.Connection, tenant_id: str, generation: int) -> None:
        """Make the rebuilt index the live one; every embedded chunk is in it, so all count as indexed."""
        conn.execute(
            "UPDATE ingest.tenants SET index_generation = %s, rebuild_generation = NULL, rebuild_cursor = NULL"
            " WHERE tenant_id = %s",
            (generation, tenant_id),
        )
        conn.execute(
            "UPDATE ingest.chunks SET state = 'indexed', updated_at = now()"
            " WHERE tenant_id = %s AND state = 'embedded'",
            (tenant_id,),
        )

    # ---- uploads -------------------------------------------------------------------------------

    def latest_upload(self, conn: psycopg.Connection, doc_id: str) -> Upload | None:
        row = conn.execute(
            "SELECT * FROM ingest.uploads WHERE doc_id = %s ORDER BY upload_id DESC LIMIT 1", (doc_id,)
        ).fetchone()
        return _upload(row) if row else None

    def record_upload(
        self, conn: psycopg.Connection, *, tenant_id: str, doc_id: str, doc_name: str,
        content_sha256: str | None, size_bytes: int | None, is_delete: bool, partition_month: str,
        file_mtime_ns: int | None = None,
    ) -> int:
        """Append an upload event. Events become visible in upload_id order (a trigger assigns the id under a
        lock held to commit), so a reader that pages by upload_id never skips one."""
        row = conn.execute(
            "INSERT INTO ingest.uploads (tenant_id, doc_id, doc_name, content_sha256, size_bytes, is_delete,"
            " partition_month, file_mtime_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING upload_id",
            (tenant_id, doc_id, doc_name, content_sha256, size_bytes, is_delete, partition_month, file_mtime_ns),
        ).fetchone()
        return row["upload_id"]

    def note_file_seen(
        self, conn: psycopg.Connection, upload_id: int, file_mtime_ns: int, size_bytes: int | None = None
    ) -> None:
        """The landed file was found identical to this upload under a new modification time (or with a size the
        upload did not record): remember it, so it is not hashed again."""
        conn.execute("UPDATE ingest.uploads SET file_mtime_ns = %s, size_bytes = coalesce(%s, size_bytes)"
                     " WHERE upload_id = %s", (file_mtime_ns, size_bytes, upload_id))

    def record_removal(self, conn: psycopg.Connection, upload: Upload) -> Upload:
        """Record that the file of `upload` left the landing zone: a delete event in the same partition."""
        upload_id = self.record_upload(
            conn, tenant_id=upload.tenant_id, doc_id=upload.doc_id, doc_name=upload.doc_name, content_sha256=None,
            size_bytes=None, is_delete=True, partition_month=upload.partition_month,
        )
        return replace(upload, upload_id=upload_id, content_sha256=None, is_delete=True, size_bytes=None)

    def partition_uploads(self, conn: psycopg.Connection, tenant_id: str, month: str) -> list[Upload]:
        """The partition's upload events that are still the latest word on their document."""
        rows = conn.execute(
            "SELECT u.* FROM ingest.uploads u WHERE u.tenant_id = %s AND u.partition_month = %s"
            " AND u.upload_id = (SELECT max(v.upload_id) FROM ingest.uploads v WHERE v.doc_id = u.doc_id)"
            " ORDER BY u.upload_id",
            (tenant_id, month),
        ).fetchall()
        return [_upload(row) for row in rows]

    def latest_uploads(self, conn: psycopg.Connection, tenant_id: str) -> dict[str, Upload]:
        """The latest upload event of each of the tenant's documents, by document name."""
        rows = conn.execute(
            "SELECT DISTINCT ON (doc_id) * FROM ingest.uploads WHERE tenant_id = %s ORDER BY doc_id, upload_id DESC",
            (tenant_id,),
        ).fetchall()
        return {row["doc_name"]: _upload(row) for row in rows}

    def uploads_after(self, upload_id: int, limit: int) -> list[Upload]:
        """Upload events recorded after `upload_id`, oldest first (the sensor's page)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM ingest.uploads WHERE upload_id > %s ORDER BY upload_id LIMIT %s", (upload_id, limit)
            ).fetchall()
        return [_upload(row) for row in rows]

    def pending_partitions(self, tenant_id: str | None = None, limits: dict | None = None) -> list[tuple[str, str]]:
        """(tenant, month) partitions with an upload not yet registered or work not yet indexed, and, given the
        current extraction `limits` (SandboxLimits.as_dict), those with a document quarantined under a smaller
        limit."""
        with self.connect() as conn:
            rows = conn.execute(
                """
                SELECT DISTINCT u.tenant_id, u.partition_month
                FROM ingest.uploads u
                LEFT JOIN ingest.documents d ON d.doc_id = u.doc_id
                WHERE u.upload_id = (SELECT max(v.upload_id) FROM ingest.uploads v WHERE v.doc_id = u.doc_id)
                  AND (%(tenant)s::text IS NULL OR u.tenant_id = %(tenant)s)
                  AND (d.doc_id IS NULL OR d.upload_id <> u.upload_id
                       OR d.status = 'registered'
                       OR EXISTS (SELECT 1 FROM ingest.chunks c
                                  WHERE c.doc_id = d.doc_id AND c.state <> 'indexed')
                       OR """ + _RETRYABLE_QUARANTINE + """)
                ORDER BY 1, 2
                """,
                {"tenant": tenant_id, "limits": Jsonb(limits) if limits else None},
            ).fetchall()
        return [(row["tenant_id"], row["partition_month"]) for row in rows]

    # ---- documents -----------------------------------------------------------------------------

    def document(self, conn: psycopg.Connection, doc_id: str) -> dict | None:
        return conn.execute("SELECT * FROM ingest.documents WHERE doc_id = %s", (doc_id,)).fetchone()

    def documents_by_id(self, conn: psycopg.Connection, doc_ids: list[str]) -> dict[str, dict]:
        """The documents of these ids that exist, by id (one query)."""
        rows = conn.execute("SELECT * FROM ingest.documents WHERE doc_id = ANY(%s::uuid[])", (list(doc_ids),))
        return {str(row["doc_id"]): row for row in rows.fetchall()}

    def register_document(self, conn: psycopg.Connection, upload: Upload, content_sha256: str) -> None:
        conn.execute(
            "INSERT INTO ingest.documents (doc_id, tenant_id, doc_name, upload_id, partition_month,"
            " content_sha256, status) VALUES (%s, %s, %s, %s, %s, %s, 'registered')"
            " ON CONFLICT (doc_id) DO UPDATE SET upload_id = EXCLUDED.upload_id,"
            " partition_month = EXCLUDED.partition_month, content_sha256 = EXCLUDED.content_sha256,"
            " status = 'registered', updated_at = now(), extraction_attempts = CASE"
            " WHEN documents.content_sha256 IS DISTINCT FROM EXCLUDED.content_sha256 THEN 0"
            " ELSE documents.extraction_attempts END",
            (upload.doc_id, upload.tenant_id, upload.doc_name, upload.upload_id, upload.partition_month,
             content_sha256),
        )

    def touch_document(self, conn: psycopg.Connection, upload: Upload) -> None:
        """Record that the latest upload of an unchanged document has been seen."""
        conn.execute(
            "UPDATE ingest.documents SET upload_id = %s, partition_month = %s WHERE doc_id = %s",
            (upload.upload_id, upload.partition_month, upload.doc_id),
        )

    def tombstone(self, conn: psycopg.Connection, upload: Upload) -> None:
        """Record a deletion of a document that has no live row, so the upload counts as handled."""
        conn.execute(
            "INSERT INTO ingest.documents (doc_id, tenant_id, doc_name, upload_id, partition_month, status)"
            " VALUES (%s, %s, %s, %s, %s, 'deleted') ON CONFLICT (doc_id) DO UPDATE SET"
            " upload_id = EXCLUDED.upload_id, partition_month = EXCLUDED.partition_month, updated_at = now()",
            (upload.doc_id, upload.tenant_id, upload.doc_name, upload.upload_id, upload.partition_month),
        )

    def delete_document(self, conn: psycopg.Connection, upload: Upload) -> None:
        """Tombstone the document and mark its chunks stale (the index stage removes them)."""
        conn.execute(
            "UPDATE ingest.documents SET status = 'deleted', content_sha256 = NULL, chunk_count = 0,"
            " token_count = 0, upload_id = %s, partition_month = %s, updated_at = now() WHERE doc_id = %s",
            (upload.upload_id, upload.partition_month, upload.doc_id),
        )
        conn.execute("UPDATE ingest.chunks SET state = 'stale', updated_at = now() WHERE doc_id = %s",
                     (upload.doc_id,))

    def live_documents(self, tenant_id: str | None = None) -> list[dict]:
        """Documents that should have a file in the landing zone (not deleted)."""
        sql = "SELECT tenant_id, doc_name, partition_month, upload_id FROM ingest.documents WHERE status <> 'deleted'"
        with self.connect() as conn:
            if tenant_id is None:
                return conn.execute(sql).fetchall()
            return conn.execute(sql + " AND tenant_id = %s", (tenant_id,)).fetchall()  # by the tenant's index

    def documents_to_chunk(self, tenant_id: str, month: str, limits: dict | None = None) -> list[dict]:
        """The partition's registered documents and, given the current extraction `limits`
        (SandboxLimits.as_dict), those quarantined under a smaller limit than the same limit now."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT d.* FROM ingest.documents d"
                " WHERE d.tenant_id = %(tenant)s AND d.partition_month = %(month)s"
                f" AND (d.status = 'registered' OR {_RETRYABLE_QUARANTINE})"
                " ORDER BY d.doc_name",
                {"tenant": tenant_id, "month": month, "limits": Jsonb(limits) if limits else None},
            ).fetchall()

    def count_extraction_without_verdict(self, conn: psycopg.Connection, doc_id: str) -> int:
        """One more extraction of the document's current bytes ended with no verdict; how many in a row now."""
        return conn.execute(
            "UPDATE ingest.documents SET extraction_attempts = extraction_attempts + 1 WHERE doc_id = %s"
            " RETURNING extraction_attempts", (doc_id,)).fetchone()["extraction_attempts"]

    def quarantine_document(
        self, conn: psycopg.Connection, document: dict, content_sha256: str, reason: str,
        reason_code: str = "unreadable", limits: dict | None = None,
    ) -> None:
        """Quarantine these bytes of the document, with the human reason, its machine code (a ReasonCode) and,
        when a limit refused it rather than its content, the limits it failed under ({"timeout_s": 60}): a run
        under a larger limit tries it again. Its chunks are marked stale, so they leave the index."""
        conn.execute(
            "INSERT INTO ingest.quarantine"
            " (tenant_id, doc_id, content_sha256, doc_name, upload_id, reason, reason_code, limits)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (doc_id, content_sha256)"
            " DO UPDATE SET reason = EXCLUDED.reason, reason_code = EXCLUDED.reason_code, limits = EXCLUDED.limits,"
            " quarantined_at = now()",
            (document["tenant_id"], document["doc_id"], content_sha256, document["doc_name"],
             document["upload_id"], reason, str(reason_code), Jsonb(limits) if limits else None),
        )
        conn.execute(
            "UPDATE ingest.documents SET status = 'quarantined', content_sha256 = %s, chunk_count = 0,"
            " token_count = 0, extraction_attempts = 0, updated_at = now() WHERE doc_id = %s",
            (content_sha256, document["doc_id"]),
        )
        conn.execute("UPDATE ingest.chunks SET state = 'stale', updated_at = now() WHERE doc_id = %s",
                     (document["doc_id"],))

    def document_embeddings(self, conn: psycopg.Connection, doc_id: str) -> list[dict]:
        """The document's chunks that hold an embedding (chunk id, text MAC, sealed embedding)."""
        return conn.execute(
            "SELECT chunk_id::text AS chunk_id, text_mac, embedding_ciphertext, key_version, seal_format"
            " FROM ingest.chunks WHERE doc_id = %s AND embedding_ciphertext IS NOT NULL",
            (doc_id,),
        ).fetchall()

    def store_chunks(
        self, conn: psycopg.Connection, document: dict, content_sha256: str, rows: list[tuple]
    ) -> None:
        """Upsert a document's encrypted chunks; keep the embedding of a chunk whose text is unchanged.

        rows: (chunk_id, sequence, token_count, text_mac, text_ciphertext, key_version, embedding_ciphertext);
        the embedding is None, or one already computed for the same text (sealed for this chunk id): such a
        chunk is stored as embedded and is not embedded again.
        """
        with conn.cursor() as cur:
            cur.executemany(
                """
                INSERT INTO ingest.chunks AS c (chunk_id, tenant_id, doc_id, sequence, token_count, text_mac,
                                               text_ciphertext, key_version, embedding_ciphertext, state)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (chunk_id) DO UPDATE SET
                    token_count = EXCLUDED.token_count,
                    text_ciphertext = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                           THEN c.text_ciphertext ELSE EXCLUDED.text_ciphertext END,
                    key_version = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                       THEN c.key_version ELSE EXCLUDED.key_version END,
                    seal_format = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                       THEN c.seal_format ELSE EXCLUDED.seal_format END,
                    embedding_ciphertext = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                                THEN c.embedding_ciphertext ELSE EXCLUDED.embedding_ciphertext END,
                    state = CASE WHEN c.text_mac <> EXCLUDED.text_mac THEN EXCLUDED.state
                                 WHEN c.embedding_ciphertext IS NULL THEN 'chunked'
                                 WHEN c.state = 'indexed' THEN 'indexed' ELSE 'embedded' END,
                    text_mac = EXCLUDED.text_mac,
                    updated_at = now()
                """,
                [(cid, document["tenant_id"], document["doc_id"], seq, tokens, mac, ct, kv, embedding,
                  "chunked" if embedding is None else "embedded")
                 for cid, seq, tokens, mac, ct, kv, embedding in rows],
            )
        conn.execute(
            "UPDATE ingest.chunks SET state = 'stale', updated_at = now() WHERE doc_id = %s AND sequence >= %s",
            (document["doc_id"], len(rows)),
        )
        conn.execute(
            "UPDATE ingest.documents SET status = 'chunked', content_sha256 = %s, chunk_count = %s,"
            " token_count = %s, extraction_attempts = 0, updated_at = now() WHERE doc_id = %s",
            (content_sha256, len(rows), sum(r[2] for r in rows), document["doc_id"]),
        )

    # ---- chunks --------------------------------------------------------------------------------

    _PARTITION_CHUNKS = (
        "SELECT c.chunk_id::text AS chunk_id, c.doc_id::text AS doc_id, c.sequence, c.text_mac,"
        " c.text_ciphertext, c.embedding_ciphertext, c.key_version, c.seal_format, c.state"
        " FROM ingest.chunks c JOIN ingest.documents d USING (doc_id)"
        " WHERE d.tenant_id = %s AND d.partition_month = %s AND c.state = %s"
    )

    def chunks_in_state(
        self, conn: psycopg.Connection, tenant_id: str, month: str, state: str,
        limit: int | None = None, for_update: bool = False,
    ) -> list[dict]:
        sql = self._PARTITION_CHUNKS + " ORDER BY c.doc_id, c.sequence"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if for_update:
            sql += " FOR UPDATE OF c"
        return conn.execute(sql, (tenant_id, month, state)).fetchall()

    def chunks_to_embed(
        self, conn: psycopg.Connection, tenant_id: str, month: str, after: str | None, limit: int
    ) -> list[dict]:
        """The partition's chunks still without an embedding, in chunk-id order after `after` (a page)."""
        return conn.execute(
            "SELECT c.chunk_id::text AS chunk_id, c.text_mac, c.text_ciphertext, c.key_version, c.seal_format,"
            " c.token_count FROM ingest.chunks c JOIN ingest.documents d USING (doc_id)"
            " WHERE d.tenant_id = %s AND d.partition_month = %s AND c.state = 'chunked'"
            " AND (%s::uuid IS NULL OR c.chunk_id > %s::uuid) ORDER BY c.chunk_id LIMIT %s",
            (tenant_id, month, after, after, limit),
        ).fetchall()

    def store_embeddings(self, conn: psycopg.Connection, tenant_id: str, rows: list[tuple]) -> int:
        """rows: (embedding_ciphertext, chunk_id, text_mac). Only chunks still holding that text change."""
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE ingest.chunks SET embedding_ciphertext = %s, state = 'embedded', updated_at = now()"
                " WHERE chunk_id = %s AND text_mac = %s AND state = 'chunked'",
                rows,
            )
        conn.execute("INSERT INTO ingest.embedding_log (tenant_id, chunk_count) VALUES (%s, %s)",
                     (tenant_id, len(rows)))
        return len(rows)

    def mark_indexed(self, conn: psycopg.Connection, chunk_ids: list[str]) -> None:
        conn.execute(
            "UPDATE ingest.chunks SET state = 'indexed', updated_at = now() WHERE chunk_id = ANY(%s::uuid[])",
            (chunk_ids,),
        )

    def remove_chunks(self, conn: psycopg.Connection, chunk_ids: list[str]) -> None:
        conn.execute("DELETE FROM ingest.chunks WHERE chunk_id = ANY(%s::uuid[]) AND state = 'stale'",
                     (chunk_ids,))

    def tenant_chunks_with_embeddings(
        self, conn: psycopg.Connection, tenant_id: str, after: str | None = None, limit: int | None = None
    ) -> list[dict]:
        """The tenant's embedded chunks in chunk-id order; page with `after` (the last id seen) and `limit`."""
        sql = (
            "SELECT chunk_id::text AS chunk_id, doc_id::text AS doc_id, sequence, text_mac, text_ciphertext,"
            " embedding_ciphertext, key_version, seal_format, state FROM ingest.chunks"
            " WHERE tenant_id = %s AND state IN ('embedded', 'indexed') AND (%s::uuid IS NULL OR chunk_id > %s::uuid)"
            " ORDER BY chunk_id"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return conn.execute(sql, (tenant_id, after, after)).fetchall()

    def indexed_chunk_ids(self, conn: psycopg.Connection, tenant_id: str) -> set[str]:
        rows = conn.execute(
            "SELECT chunk_id::text AS chunk_id FROM ingest.chunks WHERE tenant_id = %s AND state = 'indexed'",
            (tenant_id,),
        ).fetchall()
        return {row["chunk_id"] for row in rows}

    def indexed_count(self, conn: psycopg.Connection, tenant_id: str) -> int:
        """How many of the tenant's chunks are indexed (an index-only count, no row is read)."""
        return conn.execute("SELECT count(*) AS n FROM ingest.chunks WHERE tenant_id = %s AND state = 'indexed'",
                            (tenant_id,)).fetchone()["n"]

    _SAMPLED = ("SELECT c.chunk_id::text AS chunk_id, c.text_mac, c.embedding_ciphertext, c.key_version,"
                " c.seal_format, c.state FROM ingest.chunks c")

    def indexed_chunks(self, conn: psycopg.Connection, tenant_id: str, chunk_ids: list[str]) -> list[dict]:
        """Those of these chunks that are indexed, with their sealed embeddings (no row lock)."""
        if not chunk_ids:
            return []
        return conn.execute(self._SAMPLED + " WHERE c.tenant_id = %s AND c.state = 'indexed'"
                            " AND c.chunk_id = ANY(%s::uuid[])", (tenant_id, list(chunk_ids))).fetchall()

    def sample_indexed_chunks(self, conn: psycopg.Connection, tenant_id: str, size: int, rng,
                              runs: int = 40) -> list[dict]:
        """A random sample of at most `size` of the tenant's indexed chunks, with their sealed embeddings.

        Chunk ids are uuid5 hashes, so the ids that follow a random id are a random subset of the tenant's
        chunks, unrelated to their content: the sample is `runs` short runs of consecutive ids after random
        starting ids (wrapping round), each a range scan of `chunks_tenant_state_id_idx`. Its cost depends on
        `size`, not on the tenant's size (a tenant with fewer chunks is read whole). `rng` is a random.Random.
        """
        per_run = max(1, -(-size // runs))
        found: dict[str, dict] = {}
        for _ in range(runs):
            start = str(uuid.UUID(int=rng.getrandbits(128)))
            rows = conn.execute(self._SAMPLED + " WHERE c.tenant_id = %s AND c.state = 'indexed'"
                                " AND c.chunk_id >= %s::uuid ORDER BY c.chunk_id LIMIT %s",
                                (tenant_id, start, per_run)).fetchall()
            if len(rows) < per_run:
                rows += conn.execute(self._SAMPLED + " WHERE c.tenant_id = %s AND c.state = 'indexed'"
                                     " AND c.chunk_id < %s::uuid ORDER BY c.chunk_id LIMIT %s",
                                     (tenant_id, start, per_run - len(rows))).fetchall()
            for row in rows:
                found.setdefault(row["chunk_id"], row)
            if len(found) >= size:
                break
        return list(found.values())[:size]

    def partition_chunks(self, conn: psycopg.Connection, tenant_id: str, month: str) -> list[dict]:
        return conn.execute(
            "SELECT c.chunk_id::text AS chunk_id, c.text_mac, c.text_ciphertext, c.embedding_ciphertext,"
            " c.key_version, c.seal_format, c.state FROM ingest.chunks c JOIN ingest.documents d USING (doc_id)"
            " WHERE d.tenant_id = %s AND d.partition_month = %s AND c.state <> 'stale'",
            (tenant_id, month),
        ).fetchall()

    def hits(self, conn: psycopg.Connection, tenant_id: str, chunk_ids: list[str]) -> dict[str, dict]:
        rows = conn.execute(
            "SELECT c.chunk_id::text AS chunk_id, c.doc_id::text AS doc_id, c.sequence, c.text_mac,"
            " c.text_ciphertext, c.key_version, c.seal_format, d.doc_name"
            " FROM ingest.chunks c JOIN ingest.documents d USING (doc_id)"
            " WHERE c.tenant_id = %s AND c.chunk_id = ANY(%s::uuid[]) AND c.state = 'indexed'",
            (tenant_id, chunk_ids),
        ).fetchall()
        return {row["chunk_id"]: row for row in rows}

    # ---- reconciliation ------------------------------------------------------------------------

    def registered_tenants(self) -> list[str]:
        """Tenants with a row in `ingest.tenants`: every tenant a writer has ever written for."""
        with self.connect() as conn:
            rows = conn.execute("SELECT tenant_id FROM ingest.tenants ORDER BY 1").fetchall()
        return [row["tenant_id"] for row in rows]

    def chunk_ids_by_state(self, conn: psycopg.Connection, tenant_id: str) -> dict[str, set[str]]:
        """Every chunk id of the tenant, grouped by state ('chunked', 'embedded', 'indexed', 'stale').

        Read through a server-side cursor, so a tenant of a million chunks costs its ids, never its rows.
        """
        found: dict[str, set[str]] = {"chunked": set(), "embedded": set(), "indexed": set(), "stale": set()}
        with conn.transaction(), conn.cursor(name="chunk_ids_by_state", row_factory=tuple_row) as cursor:
            cursor.itersize = 10_000
            cursor.execute("SELECT chunk_id::text, state FROM ingest.chunks WHERE tenant_id = %s", (tenant_id,))
            for chunk, state in cursor:
                found[state].add(chunk)
        return found

    def chunks_by_id(self, conn: psycopg.Connection, tenant_id: str, chunk_ids: list[str], state: str) -> list[dict]:
        """The rows of these chunks that are still in `state`, with what an index item is built from.

        Locked `FOR UPDATE` until the caller's transaction ends.
        """
        return conn.execute(
            "SELECT chunk_id::text AS chunk_id, doc_id::text AS doc_id, sequence, text_mac, text_ciphertext,"
            " embedding_ciphertext, key_version, seal_format, state FROM ingest.chunks"
            " WHERE tenant_id = %s AND chunk_id = ANY(%s::uuid[]) AND state = %s ORDER BY chunk_id FOR UPDATE",
            (tenant_id, list(chunk_ids), state),
        ).fetchall()

    # ---- reporting -----------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute("SELECT DISTINCT tenant_id FROM ingest.uploads ORDER BY 1").fetchall()
        return [row["tenant_id"] for row in rows]

    def tenant_status(self, tenant_id: str) -> dict[str, int]:
        with self.connect() as conn:
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
        return {**docs, **chunks, "embeddings_computed": int(embedded_total)}

    def quarantined(self, tenant_id: str) -> list[dict]:
        """The tenant's quarantined documents: doc_name, reason, reason_code (NULL if quarantined before codes
        were kept), limits (the limits a limit refused it under; NULL when its content is at fault) and
        quarantined_at."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT q.doc_name, q.reason, q.reason_code, q.limits, q.quarantined_at FROM ingest.quarantine q"
                " JOIN ingest.documents d ON d.doc_id = q.doc_id AND d.content_sha256 = q.content_sha256"
                " WHERE q.tenant_id = %s AND d.status = 'quarantined' ORDER BY q.doc_name",
                (tenant_id,),
            ).fetchall()

    def release_quarantined(self, conn: psycopg.Connection, tenant_id: str, names: list[str] | None = None
                            ) -> list[dict]:
        """Clear the quarantine records of the tenant's quarantined documents (those named, or all) and register
        them again, so the next run tries them. Returns what was cleared: doc_name, reason_code, limits."""
        with conn.transaction():
            return conn.execute(
                "WITH released AS ("
                " UPDATE ingest.documents d SET status = 'registered', updated_at = now()"
                " WHERE d.tenant_id = %(tenant)s AND d.status = 'quarantined'"
                " AND (%(names)s::text[] IS NULL OR d.doc_name = ANY(%(names)s::text[]))"
                " RETURNING d.doc_id, d.doc_name, d.content_sha256),"
                " cleared AS (DELETE FROM ingest.quarantine q USING released r"
                " WHERE q.doc_id = r.doc_id AND q.content_sha256 = r.content_sha256"
                " RETURNING q.doc_id, q.reason_code, q.limits)"
                " SELECT r.doc_name, c.reason_code, c.limits FROM released r LEFT JOIN cleared c USING (doc_id)"
                " ORDER BY r.doc_name",
                {"tenant": tenant_id, "names": names},
            ).fetchall()


def _upload(row: dict) -> Upload:
    return Upload(
        upload_id=row["upload_id"], tenant_id=row["tenant_id"], doc_id=str(row["doc_id"]),
        doc_name=row["doc_name"], content_sha256=row["content_sha256"], is_delete=row["is_delete"],
        partition_month=row["partition_month"], size_bytes=row.get("size_bytes"), uploaded_at=row.get("uploaded_at"),
        file_mtime_ns=row.get("file_mtime_ns"),
    )


def sha256_file(path) -> str:
    """The file's SHA-256, read without following a symbolic link and without blocking on a FIFO.

    Raises landing.RefusedFile (code symlink or special-file, naming the file) for anything that is not a
    regular file when opened, whatever it was when a folder was listed.
    """
    from ingest_pipeline.stores.landing_zone import hash_file

    return hash_file(path)[1]
