"""Upload events: the ledger's record that a tenant's document arrived, changed or was deleted.

Two ways in record them: `ingest-pipeline upload` (which copies the file into the landing zone first), and
the upload sensor, for files dropped straight into `$INGEST_HOME/landing/<tenant>/...` by another system.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest_pipeline.core.ids import InvalidName, document_id, validate_document_name, validate_tenant
from ingest_pipeline.landing import LandingZone
from ingest_pipeline.ledger import Ledger, Upload, sha256_file

log = logging.getLogger(__name__)


def current_month(moment: datetime | None = None) -> str:
    """The month partition key an upload made now belongs to, e.g. 2026-11-01."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-01")


def is_current(upload: Upload | None, digest: str) -> bool:
    """Whether the document's latest upload already is these bytes."""
    return upload is not None and not upload.is_delete and upload.content_sha256 == digest


def record_file(
    ledger: Ledger, conn, tenant_id: str, name: str, stat: os.stat_result, digest: str, month: str
) -> int:
    """Record an upload of the landed file whose `stat` was taken before it was hashed to `digest`."""
    with conn.transaction():
        return ledger.record_upload(
            conn, tenant_id=tenant_id, doc_id=document_id(tenant_id, name), doc_name=name, content_sha256=digest,
            size_bytes=stat.st_size, is_delete=False, partition_month=month, file_mtime_ns=stat.st_mtime_ns,
        )


@dataclass
class DroppedFiles:
    """What a scan of one tenant's landing folder found."""

    recorded: list[str] = field(default_factory=list)  # new or changed files, now recorded as uploads
    refused: list[str] = field(default_factory=list)  # file names the pipeline does not accept


def record_dropped_files(ledger: Ledger, zone: LandingZone, tenant_id: str, limit: int) -> DroppedFiles:
    """Record an upload for each file in the tenant's landing folder that the ledger does not know in this form.

    A file is hashed only when it is new, or its size or modification time differs from those recorded with
    its latest upload; identical bytes are never recorded twice. Raises LandingZoneUnavailable when
    the folder cannot be read. Records at most `limit` files per call.
    """
    validate_tenant(tenant_id)
    found = DroppedFiles()
    present = zone.tenant_files(tenant_id)
    month = current_month()
    with ledger.connect() as conn:
        latest = ledger.latest_uploads(conn, tenant_id)
        for raw_name in sorted(present):
            try:
                name = validate_document_name(raw_name)
            except InvalidName:
                found.refused.append(raw_name)
                continue
            path = zone.path(tenant_id, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # removed while we looked
            upload = latest.get(name)
            if (upload is not None and not upload.is_delete and upload.size_bytes == stat.st_size
                    and upload.file_mtime_ns == stat.st_mtime_ns):
                continue
            digest = sha256_file(path)
            if is_current(upload, digest):
                with conn.transaction():  # the same bytes, touched: do not hash them again
                    ledger.note_file_seen(conn, upload.upload_id, stat.st_mtime_ns)
                continue
            if len(found.recorded) >= limit:
                break
            record_file(ledger, conn, tenant_id, name, stat, digest, month)
            found.recorded.append(name)
    if found.refused:
        log.warning("tenant %s: %d file(s) in the landing zone have names the pipeline refuses", tenant_id,
                    len(found.refused))
    return found
