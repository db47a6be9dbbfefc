"""Upload events: the ledger's record that a tenant's document arrived, changed or was deleted.

Three ways in record them: `upload_files` (`ingest-pipeline upload`, which copies the files into the landing zone
first), and `record_dropped_files` (the upload sensor, and `sweep_landing_zone` before `ingest-pipeline ingest`),
for files dropped straight into `$INGEST_HOME/landing/<tenant>/...` by another system.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import document_id, validate_document_name, validate_tenant
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline.stores.landing_zone import LandingScan, LandingZone, LandingZoneUnavailable, RefusedFile, hash_file
from ingest_pipeline.stores.ledger import Ledger, LiveDocument, Upload, erasure_message, sha256_file
from ingest_pipeline.work.landing_scan import compare, tenant_folders

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


def note_unchanged_file(ledger: Ledger, conn, upload: Upload, stat: os.stat_result) -> None:
    """The landed file still holds the bytes of `upload` (hashed just now) under a new modification time or
    size: record them with the upload, so the next scan (see `landing_scan.compare`) does not hash it again."""
    ledger.uploads.note_file_seen(conn, upload.upload_id, stat.st_mtime_ns, stat.st_size)


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

    def removed_by_partition(self) -> dict[tuple[str, str], list[LiveDocument]]:
        """The removed documents by their (tenant, month) partition: each such partition's run deletes them."""
        partitions: dict[tuple[str, str], list[LiveDocument]] = {}
        for doc in self.removed:
            partitions.setdefault((doc.tenant_id, doc.partition_month), []).append(doc)
        return partitions


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
                    note_unchanged_file(ledger, conn, upload, stat)
                continue
            record_file(ledger, conn, tenant_id, name, stat, digest, month)
            found.recorded.append(name)
    if found.refused:
        listed = ", ".join(f"{name!r} ({code})" for name, code in sorted(found.refused.items())[:20])
        log.warning("tenant %s: %d file(s) in the landing zone are refused and not read: %s%s", tenant_id,
                    len(found.refused), listed, ", ..." if len(found.refused) > 20 else "")
    return found


@dataclass
class LandingSweep:
    """What `sweep_landing_zone` found across tenants."""

    # (tenant, month) partitions with a live document whose file was removed (a deletion by removal).
    removed: set[tuple[str, str]] = field(default_factory=set)
    skipped: list[TenantErased] = field(default_factory=list)  # erased tenants whose folders were not read
    # The first folder that could not be read among tenants with live documents: an outage to fix, never a
    # reason to delete (a tenant without documents has nothing to lose).
    outage: LandingZoneUnavailable | None = None


def sweep_landing_zone(ledger: Ledger, zone: LandingZone, tenant: str | None = None) -> LandingSweep:
    """Record the files copied straight into the landing zone as uploads, as the upload sensor does, and find the
    partitions of live documents whose file was removed: one walk per tenant (`tenant`, or every tenant with a
    folder or a live document)."""
    live: dict[str, list[LiveDocument]] = {}
    for doc in ledger.documents.live(tenant):
        live.setdefault(doc.tenant_id, []).append(doc)
    folders = [tenant] if tenant else tenant_folders(zone)
    sweep = LandingSweep()
    for tenant_id in sorted(set(folders) | set(live)):
        try:
            found = record_dropped_files(ledger, zone, tenant_id, limit=1_000_000, live_documents=live.get(tenant_id))
        except TenantErased as exc:
            sweep.skipped.append(exc)
            continue
        except LandingZoneUnavailable as exc:
            if tenant_id in live:
                sweep.outage = sweep.outage or exc
            continue
        sweep.removed |= set(found.removed_by_partition())
    return sweep


def files_to_upload(paths: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(document name, file) pairs, and the names refused: a file keeps its name, a folder's files their
    relative paths.

    Two files that would get one name are refused, so one upload never silently replaces another. In a
    folder, symbolic links and special files are skipped and reported; one named explicitly is refused
    before anything is uploaded. Links are never followed, so an upload never reaches outside what was named.
    """
    found, refused = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_symlink():
            raise RefusedFile(f"{raw} is a symbolic link: links are never uploaded (upload the file it points to)",
                              code="symlink")
        if path.is_dir():
            # Every visible file is uploaded, so one in an unsupported format is quarantined with its reason.
            for file in sorted(path.rglob("*")):
                name = file.relative_to(path).as_posix()
                if any(part.startswith(".") for part in Path(name).parts) or file.is_dir():
                    continue
                if file.is_symlink() or not file.is_file():
                    refused.append(f"{name} ({'symlink' if file.is_symlink() else 'special-file'})")
                else:
                    found.append((name, file))
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    found = [(validate_document_name(name), file) for name, file in found]
    names = Counter(name for name, _ in found)
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise ValueError(f"several files would be uploaded as {', '.join(clashes)}: upload them separately")
    return found, refused


def _landed_digest(landed: Path) -> str | None:
    """The landed file's SHA-256; None when there is none, or a link or FIFO took its place (replaced by store)."""
    try:
        return sha256_file(landed)
    except (FileNotFoundError, RefusedFile):
        return None


def upload_files(ledger: Ledger, zone: LandingZone, tenant: str, paths: list[str],
                 delete: bool = False) -> dict[str, list[str]]:
    """Register documents for a tenant: copy each file into the landing zone and record its upload event (or,
    with `delete`, remove the named documents' files and record their deletion).

    {"uploaded", "unchanged", "deleted", "not_found", "refused": [names]}: a file whose bytes are already the
    document's latest upload (and landed) is unchanged. An erased tenant raises TenantErased before anything
    is copied or recorded, and a file copied while its tenant is being erased is taken out again.
    """
    tenant = validate_tenant(tenant)
    month = current_month()
    outcome: dict[str, list[str]] = {"uploaded": [], "unchanged": [], "deleted": [], "not_found": []}
    items, outcome["refused"] = ([(validate_document_name(p), None) for p in paths], []) if delete \
        else files_to_upload(paths)
    with ledger.connect() as conn:
        with conn.transaction():
            refuse_erased(ledger, conn, tenant)  # an erased tenant: nothing copied, nothing recorded
        for name, source in items:
            doc_id = document_id(tenant, name)
            latest = ledger.uploads.latest(conn, doc_id)
            if delete:
                if latest is None or latest.is_delete:
                    outcome["not_found"].append(name)
                    continue
                # The file goes first: a sensor tick in between must not take it for a new upload.
                zone.remove(tenant, name)
                with conn.transaction():
                    refuse_erased(ledger, conn, tenant)
                    ledger.uploads.record(conn, tenant_id=tenant, doc_id=doc_id, doc_name=name, content_sha256=None,
                                         size_bytes=None, is_delete=True, partition_month=month)
                outcome["deleted"].append(name)
                continue
            digest = sha256_file(source)
            landed = zone.path(tenant, name)
            if is_current(latest, digest) and _landed_digest(landed) == digest:
                outcome["unchanged"].append(name)
                continue
            zone.store(tenant, name, source)
            try:
                record_file(ledger, conn, tenant, name, landed.stat(), digest, month)
            except TenantErased:  # erased while this upload ran: its erasure has removed (or will remove) the rest
                landed.unlink(missing_ok=True)
                raise
            outcome["uploaded"].append(name)
    return outcome
