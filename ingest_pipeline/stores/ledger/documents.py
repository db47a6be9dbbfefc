"""The documents table (`ingest.documents`): one row per document, its status and its latest upload."""

from __future__ import annotations

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ingest_pipeline.stores.ledger.connection import Database, read_rows
from ingest_pipeline.stores.ledger.quarantine import RETRYABLE_QUARANTINE
from ingest_pipeline.stores.ledger.rows import Document, LiveDocument, Upload

_COLUMNS = ("d.doc_id::text AS doc_id, d.tenant_id, d.doc_name, d.upload_id, d.partition_month, d.content_sha256,"
            " d.status, d.chunk_count, d.token_count, d.updated_at, d.extraction_attempts, d.format")


class Documents:
    """Documents: registered from uploads, chunked, tombstoned or deleted."""

    def __init__(self, db: Database):
        self.db = db

    def find(self, conn: psycopg.Connection, doc_id: str) -> Document | None:
        """The document of this id, or None."""
        rows = read_rows(conn, Document, f"SELECT {_COLUMNS} FROM ingest.documents d WHERE d.doc_id = %s", (doc_id,))
        return rows[0] if rows else None

    def by_id(self, conn: psycopg.Connection, doc_ids: list[str]) -> dict[str, Document]:
        """The documents of these ids that exist, by id (one query)."""
        rows = read_rows(conn, Document, f"SELECT {_COLUMNS} FROM ingest.documents d WHERE d.doc_id = ANY(%s::uuid[])",
                         (list(doc_ids),))
        return {row.doc_id: row for row in rows}

    def register(self, conn: psycopg.Connection, upload: Upload, content_sha256: str) -> None:
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

    def touch(self, conn: psycopg.Connection, upload: Upload) -> None:
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

    def delete(self, conn: psycopg.Connection, upload: Upload) -> None:
        """Tombstone the document and mark its chunks stale (the index stage removes them)."""
        conn.execute(
            "UPDATE ingest.documents SET status = 'deleted', content_sha256 = NULL, chunk_count = 0,"
            " token_count = 0, upload_id = %s, partition_month = %s, updated_at = now() WHERE doc_id = %s",
            (upload.upload_id, upload.partition_month, upload.doc_id),
        )
        conn.execute("UPDATE ingest.chunks SET state = 'stale', updated_at = now() WHERE doc_id = %s",
                     (upload.doc_id,))

    def live(self, tenant_id: str | None = None) -> list[LiveDocument]:
        """Documents that should have a file in the landing zone (not deleted)."""
        query = "SELECT tenant_id, doc_name, partition_month, upload_id FROM ingest.documents WHERE status <> 'deleted'"
        with self.db.connect() as conn, conn.cursor(row_factory=class_row(LiveDocument)) as cursor:
            if tenant_id is None:
                return cursor.execute(query).fetchall()
            return cursor.execute(query + " AND tenant_id = %s", (tenant_id,)).fetchall()  # by the tenant's index

    def to_chunk(self, tenant_id: str, month: str, limits: dict | None = None) -> list[Document]:
        """The partition's registered documents and, given the current extraction `limits`
        (SandboxLimits.as_dict), those quarantined under a smaller limit than the same limit now."""
        with self.db.connect() as conn:
            return read_rows(
                conn, Document,
                f"SELECT {_COLUMNS} FROM ingest.documents d"
                " WHERE d.tenant_id = %(tenant)s AND d.partition_month = %(month)s"
                f" AND (d.status = 'registered' OR {RETRYABLE_QUARANTINE})"
                " ORDER BY d.doc_name",
                {"tenant": tenant_id, "month": month, "limits": Jsonb(limits) if limits else None},
            )

    def count_extraction_without_verdict(self, conn: psycopg.Connection, doc_id: str) -> int:
        """One more extraction of the document's current bytes ended with no verdict; how many in a row now."""
        return conn.execute(
            "UPDATE ingest.documents SET extraction_attempts = extraction_attempts + 1 WHERE doc_id = %s"
            " RETURNING extraction_attempts", (doc_id,)).fetchone()["extraction_attempts"]
