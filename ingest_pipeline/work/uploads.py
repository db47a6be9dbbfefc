"""Upload events: the ledger's record that a tenant's document arrived, changed or was deleted.

Two ways in record them: `ingest-pipeline upload` (which copies the file into the landing zone first), and
the upload sensor, for files dropped straight into `$INGEST_HOME/landing/<tenant>/...` by another system.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import document_id, validate_tenant
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline.stores.landing_zone import LandingScan, LandingZone, RefusedFile, hash_file
from ingest_pipeline.stores.ledger import Ledger, LiveDocument, Upload, erasure_message
from ingest_pipeline.work.landing_scan import compare

log = logging.getLogger(__name__)


def current_month(moment: datetime | None = None) -> str:
    """The month partition key an upload made now belongs to, e.g. 2026-11-01."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-01")


def is_current(upload: Upload | None, digest: str) -> bool:
    """Whether the document's latest upload already is these bytes."""
    return upload is not None and not upload.is_delete and upload.content_sha256 == digest


def refuse_erased(ledger: Ledger, conn, tenant_id: str) -> None:
    """Raise TenantErased for a tombstoned tenant. In the transaction that records an upload, this holds the
    tenant's admission lock to its end, so an erasure requested meanwhile waits for the upload (and erases it)."""
    ledger.tenants.lock_admission(conn, tenant_id)
    erasure = ledger.tenants.erasure(conn, tenant_id)
    if erasure is not None:
        raise TenantErased(erasure_message(tenant_id, erasure.completed_at))


def record_file(
    ledger: Ledger, conn, tenant_id: str, name: str, stat: os.stat_result, digest: str, month: str
) -> int:
    """Record an upload of the landed file whose `stat` was taken before it was hashed to `digest`.

    Raises TenantErased, recording nothing, for an erased tenant (or one being erased)."""
    with conn.transaction():
        refuse_erased(ledger, conn, tenant_id)
        return ledger.uploads.record(
            conn, tenant_id=tenant_id, doc_id=document_id(tenant_id, name), doc_name=name, content_sha256=digest,
            size_bytes=stat.st_size, is_delete=False, partition_month=month, file_mtime_ns=stat.st_mtime_ns,
        )


@dataclass
class DroppedFiles:
    """What a scan of one tenant's landing folder found."""

    recorded: list[str] = field(default_factory=list)  # new or changed files, now recorded as uploads
    # Files the pipeline does not accept, by name as found, with why: bad-name (control characters, '..',
    # or a name that does not map back to the file), symlink (never followed) or special-file (FIFO, device).
    refused: dict[str, ReasonCode] = field(default_factory=dict)
    # The live documents given whose file is gone (as given: tenant_id, doc_name, partition_month, upload_id).
    removed: list[LiveDocument] = field(default_factory=list)
    complete: bool = True  # False when `limit` stopped the recording: more files wait
    scan: LandingScan | None = field(default=None, repr=False)  # the folder as listed


def record_dropped_files(
    ledger: Ledger, zone: LandingZone, tenant_id: str, limit: int, live_documents: list[LiveDocument] | None = None
) -> DroppedFiles:
    """Record an upload for each file in the tenant's landing folder that the ledger does not know in this form,
    and find which of `live_documents` (the tenant's, read before this call) lost their file: one walk.

    A file is hashed only when it is new, or its size or modification time differs from those recorded with
    its latest upload; identical bytes are never recorded twice. Raises LandingZoneUnavailable when
    the folder cannot be read. Records at most `limit` files per call.

    An erased tenant's folder is not read: TenantErased (also when the erasure comes while files are hashed).

    Symbolic links (never followed, wherever they point), FIFOs, sockets and devices, and names the
    pipeline refuses (control characters, '..', a backslash that would make another name) are not
    recorded: they are listed in `refused` with their code and logged by name, never read.
    """
    validate_tenant(tenant_id)
    with ledger.connect() as conn, conn.transaction():
        refuse_erased(ledger, conn, tenant_id)  # before anything is read (checked again as each file is recorded)
    live_documents = live_documents or []
    scan = zone.scan(tenant_id)
    month = current_month()
    with ledger.connect() as conn:
        latest = ledger.uploads.latest_by_name(conn, tenant_id)
        changes = compare(scan, latest, [doc.doc_name for doc in live_documents])
        missing = set(changes.missing)
        found = DroppedFiles(refused=changes.refused, scan=scan,
                             removed=[doc for doc in live_documents if doc.doc_name in missing])
        for name in sorted(changes.changed):
            if len(found.recorded) >= limit:
                found.complete = False
                break
            upload = latest.get(name)
            try:
                stat, digest = hash_file(zone.path(tenant_id, name), name)
            except FileNotFoundError:
                continue  # removed while we looked
            except RefusedFile as refusal:  # replaced by a link or a FIFO since the folder was listed
                found.refused[name] = refusal.code
                continue
            if is_current(upload, digest):
                with conn.transaction():  # the same bytes, touched: do not hash them again
                    ledger.uploads.note_file_seen(conn, upload.upload_id, stat.st_mtime_ns, stat.st_size)
                continue
            record_file(ledger, conn, tenant_id, name, stat, digest, month)
            found.recorded.append(name)
    if found.refused:
        listed = ", ".join(f"{name!r} ({code})" for name, code in sorted(found.refused.items())[:20])
        log.warning("tenant %s: %d file(s) in the landing zone are refused and not read: %s%s", tenant_id,
                    len(found.refused), listed, ", ..." if len(found.refused) > 20 else "")
    return found
