"""Quarantine (`ingest.quarantine`): documents refused by extraction, why, and under which limits."""

from __future__ import annotations

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ingest_pipeline.stores.ledger.connection import Database
from ingest_pipeline.stores.ledger.rows import Document, QuarantineRecord, Released

# A quarantine record `q` made under a limit smaller than the same limit in %(limits)s (a JSON object of the
# current limits by name, or NULL): the document deserves another try under the larger limit.
_UNDER_A_SMALLER_LIMIT = (
    "EXISTS (SELECT 1 FROM jsonb_each(q.limits) recorded WHERE jsonb_typeof(recorded.value) = 'number'"
    " AND recorded.value::numeric < (%(limits)s::jsonb ->> recorded.key)::numeric)"
)
# A document `d` quarantined under a smaller limit than now (used by the uploads' and the documents' queries).
RETRYABLE_QUARANTINE = (
    "d.status = 'quarantined' AND EXISTS (SELECT 1 FROM ingest.quarantine q WHERE q.doc_id = d.doc_id"
    f" AND q.content_sha256 = d.content_sha256 AND {_UNDER_A_SMALLER_LIMIT})"
)


class Quarantine:
    """Quarantine records: added by the chunking stage, listed and released by the operator."""

    def __init__(self, db: Database):
        self.db = db

    def add(
        self, conn: psycopg.Connection, document: Document, content_sha256: str, reason: str,
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
            (document.tenant_id, document.doc_id, content_sha256, document.doc_name,
             document.upload_id, reason, str(reason_code), Jsonb(limits) if limits else None),
        )
        conn.execute(
            "UPDATE ingest.documents SET status = 'quarantined', content_sha256 = %s, chunk_count = 0,"
            " token_count = 0, extraction_attempts = 0, updated_at = now() WHERE doc_id = %s",
            (content_sha256, document.doc_id),
        )
        conn.execute("UPDATE ingest.chunks SET state = 'stale', updated_at = now() WHERE doc_id = %s",
                     (document.doc_id,))

    def listed(self, tenant_id: str) -> list[QuarantineRecord]:
        """The tenant's quarantined documents, by name."""
        with self.db.connect() as conn, conn.cursor(row_factory=class_row(QuarantineRecord)) as cursor:
            return cursor.execute(
                "SELECT q.doc_name, q.reason, q.reason_code, q.limits, q.quarantined_at FROM ingest.quarantine q"
                " JOIN ingest.documents d ON d.doc_id = q.doc_id AND d.content_sha256 = q.content_sha256"
                " WHERE q.tenant_id = %s AND d.status = 'quarantined' ORDER BY q.doc_name",
                (tenant_id,),
            ).fetchall()

    def release(self, conn: psycopg.Connection, tenant_id: str, names: list[str] | None = None) -> list[Released]:
        """Clear the quarantine records of the tenant's quarantined documents (those named, or all) and register
        them again, so the next run tries them. Returns what was cleared."""
        with conn.transaction(), conn.cursor(row_factory=class_row(Released)) as cursor:
            return cursor.execute(
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
