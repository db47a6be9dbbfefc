"""The upload log (`ingest.uploads`): append-only events, read by document, partition and page."""

from __future__ import annotations

from dataclasses import replace

import psycopg
from psycopg.types.json import Jsonb

from ingest_pipeline.stores.ledger.connection import Database, read_rows
from ingest_pipeline.stores.ledger.quarantine import RETRYABLE_QUARANTINE
from ingest_pipeline.stores.ledger.rows import Partition, Upload

_COLUMNS = ("upload_id, tenant_id, doc_id::text AS doc_id, doc_name, content_sha256, is_delete, partition_month,"
            " size_bytes, uploaded_at, file_mtime_ns")
# An upload event `u` whose document `d` is not done with it yet: never registered, registered by an older event
# (this one not yet read), registered but not chunked, or with chunks not yet indexed.
_WORK_LEFT = ("(d.doc_id IS NULL OR d.upload_id < u.upload_id OR d.status = 'registered'"
              " OR EXISTS (SELECT 1 FROM ingest.chunks c WHERE c.doc_id = d.doc_id AND c.state <> 'indexed'))")
_COLUMNS_OF_U = ("u.upload_id, u.tenant_id, u.doc_id::text AS doc_id, u.doc_name, u.content_sha256, u.is_delete,"
                 " u.partition_month, u.size_bytes, u.uploaded_at, u.file_mtime_ns")


class Uploads:
    """Upload events: recorded by the CLI and the sensor, read by the assets and the sensor."""

    def __init__(self, db: Database):
        self.db = db

    def latest(self, conn: psycopg.Connection, doc_id: str) -> Upload | None:
        """The document's latest upload event, or None."""
        rows = read_rows(conn, Upload, f"SELECT {_COLUMNS} FROM ingest.uploads WHERE doc_id = %s"
                                       " ORDER BY upload_id DESC LIMIT 1", (doc_id,))
        return rows[0] if rows else None

    def record(
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
        upload_id = self.record(
            conn, tenant_id=upload.tenant_id, doc_id=upload.doc_id, doc_name=upload.doc_name, content_sha256=None,
            size_bytes=None, is_delete=True, partition_month=upload.partition_month,
        )
        return replace(upload, upload_id=upload_id, content_sha256=None, is_delete=True, size_bytes=None)

    def in_partition(self, conn: psycopg.Connection, tenant_id: str, month: str) -> list[Upload]:
        """The partition's upload events that are still the latest word on their document."""
        return read_rows(
            conn, Upload,
            f"SELECT {_COLUMNS_OF_U} FROM ingest.uploads u WHERE u.tenant_id = %s AND u.partition_month = %s"
            " AND u.upload_id = (SELECT max(v.upload_id) FROM ingest.uploads v WHERE v.doc_id = u.doc_id)"
            " ORDER BY u.upload_id",
            (tenant_id, month),
        )

    def latest_by_name(self, conn: psycopg.Connection, tenant_id: str) -> dict[str, Upload]:
        """The latest upload event of each of the tenant's documents, by document name."""
        rows = read_rows(
            conn, Upload,
            f"SELECT DISTINCT ON (doc_id) {_COLUMNS} FROM ingest.uploads WHERE tenant_id = %s"
            " ORDER BY doc_id, upload_id DESC",
            (tenant_id,),
        )
        return {row.doc_name: row for row in rows}

    def after(self, upload_id: int, limit: int) -> list[Upload]:
        """Upload events recorded after `upload_id`, oldest first (the sensor's page)."""
        with self.db.connect() as conn:
            return read_rows(conn, Upload, f"SELECT {_COLUMNS} FROM ingest.uploads WHERE upload_id > %s"
                                           " ORDER BY upload_id LIMIT %s", (upload_id, limit))

    def with_work_left(self, upload_ids: list[int]) -> set[int]:
        """Of these upload events, those whose document is not done with them yet. An event superseded by a newer
        one of the same document counts as done: the newer event carries the work."""
        if not upload_ids:
            return set()
        with self.db.connect() as conn:
            rows = conn.execute(
                "SELECT u.upload_id FROM ingest.uploads u LEFT JOIN ingest.documents d ON d.doc_id = u.doc_id"
                f" WHERE u.upload_id = ANY(%s) AND {_WORK_LEFT}", (list(upload_ids),),
            ).fetchall()
        return {row["upload_id"] for row in rows}

    def pending_partitions(self, tenant_id: str | None = None, limits: dict | None = None) -> list[Partition]:
        """(tenant, month) partitions with an upload not yet registered or work not yet indexed, and, given the
        current extraction `limits` (SandboxLimits.as_dict), those with a document quarantined under a smaller
        limit."""
        with self.db.connect() as conn:
            rows = conn.execute(
                """
                SELECT DISTINCT u.tenant_id, u.partition_month
                FROM ingest.uploads u
                LEFT JOIN ingest.documents d ON d.doc_id = u.doc_id
                WHERE u.upload_id = (SELECT max(v.upload_id) FROM ingest.uploads v WHERE v.doc_id = u.doc_id)
                  AND (%(tenant)s::text IS NULL OR u.tenant_id = %(tenant)s)
                  AND (""" + _WORK_LEFT + " OR " + RETRYABLE_QUARANTINE + """)
                ORDER BY 1, 2
                """,
                {"tenant": tenant_id, "limits": Jsonb(limits) if limits else None},
            ).fetchall()
        return [Partition(row["tenant_id"], row["partition_month"]) for row in rows]
