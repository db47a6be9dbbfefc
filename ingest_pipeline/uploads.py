"""Upload events: the ledger's record that a tenant's document arrived, changed or was deleted.

Two ways in record them: `ingest-pipeline upload` (which copies the file into the landing zone first), and
the upload sensor, for files dropped straight into `$INGEST_HOME/landing/<tenant>/...` by another system.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat as stat_module
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import InvalidName, document_id, validate_document_name, validate_tenant
from ingest_pipeline.keystore import TenantErased
from ingest_pipeline.landing import LandingZone
from ingest_pipeline.ledger import Ledger, Upload, erasure_message

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
    ledger.lock_admission(conn, tenant_id)
    erasure = ledger.erasure(conn, tenant_id)
    if erasure is not None:
        raise TenantErased(erasure_message(tenant_id, erasure))


def record_file(
    ledger: Ledger, conn, tenant_id: str, name: str, stat: os.stat_result, digest: str, month: str
) -> int:
    """Record an upload of the landed file whose `stat` was taken before it was hashed to `digest`.

    Raises TenantErased, recording nothing, for an erased tenant (or one being erased)."""
    with conn.transaction():
        refuse_erased(ledger, conn, tenant_id)
        return ledger.record_upload(
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


class _NotRegular(Exception):
    def __init__(self, code: ReasonCode):
        self.code = code


def _hash_regular_file(path: Path) -> tuple[os.stat_result, str]:
    """The file's stat and SHA-256, read through one descriptor opened without following a symbolic link.

    Raises _NotRegular for a link or a FIFO, socket or device (which could hang a reader), and
    FileNotFoundError for a file removed meanwhile.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotRegular(ReasonCode.SYMLINK) from None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat_module.S_ISREG(info.st_mode):
            raise _NotRegular(ReasonCode.SPECIAL_FILE)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return info, digest.hexdigest()


def record_dropped_files(ledger: Ledger, zone: LandingZone, tenant_id: str, limit: int) -> DroppedFiles:
    """Record an upload for each file in the tenant's landing folder that the ledger does not know in this form.

    A file is hashed only when it is new, or its size or modification time differs from those recorded with
    its latest upload; identical bytes are never recorded twice. Raises LandingZoneUnavailable when
    the folder cannot be read. Records at most `limit` files per call.

    An erased tenant's folder is not read: TenantErased (also when the erasure comes while files are hashed).

    Symbolic links (never followed, wherever they point), FIFOs, sockets and devices, and names the
    pipeline refuses (control characters, '..', a backslash that would make another name) are not
    recorded: they are listed in `refused` with their code and logged by name, never read.
    """
    validate_tenant(tenant_id)
    found = DroppedFiles()
    with ledger.connect() as conn, conn.transaction():
        refuse_erased(ledger, conn, tenant_id)  # before anything is read (checked again as each file is recorded)
    scan = zone.scan(tenant_id)
    found.refused.update(scan.refused)
    month = current_month()
    with ledger.connect() as conn:
        latest = ledger.latest_uploads(conn, tenant_id)
        for raw_name in sorted(scan.files):
            try:
                name = validate_document_name(raw_name)
            except InvalidName:
                name = None
            if name != raw_name:  # refused, or normalised to a name that is not this file's
                found.refused[raw_name] = ReasonCode.BAD_NAME
                continue
            path = zone.path(tenant_id, name)
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue  # removed while we looked
            upload = latest.get(name)
            if (upload is not None and not upload.is_delete and upload.size_bytes == stat.st_size
                    and upload.file_mtime_ns == stat.st_mtime_ns and stat_module.S_ISREG(stat.st_mode)):
                continue
            try:
                stat, digest = _hash_regular_file(path)
            except FileNotFoundError:
                continue
            except _NotRegular as refusal:  # replaced by a link or a FIFO since the folder was listed
                found.refused[raw_name] = refusal.code
                continue
            if is_current(upload, digest):
                with conn.transaction():  # the same bytes, touched: do not hash them again
                    ledger.note_file_seen(conn, upload.upload_id, stat.st_mtime_ns)
                continue
            if len(found.recorded) >= limit:
                break
            record_file(ledger, conn, tenant_id, name, stat, digest, month)
            found.recorded.append(name)
    if found.refused:
        listed = ", ".join(f"{name!r} ({code})" for name, code in sorted(found.refused.items())[:20])
        log.warning("tenant %s: %d file(s) in the landing zone are refused and not read: %s%s", tenant_id,
                    len(found.refused), listed, ", ..." if len(found.refused) > 20 else "")
    return found
