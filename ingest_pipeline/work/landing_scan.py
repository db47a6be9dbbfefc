"""The one landing-zone rule: which files were dropped into a tenant's folder (new or changed) and which
documents lost their file. The upload sensor, the CLI and `raw_documents` all ask it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import TENANT_PATTERN, InvalidName, validate_document_name
from ingest_pipeline.stores.landing_zone import LandingScan, LandingZone


@dataclass
class LandingChanges:
    """One tenant's landing folder compared with what the ledger knows: the one rule for dropped files (new or
    changed by size or modification time) and for removed files (an expected document without its file)."""

    scan: LandingScan
    # Valid document names whose file is new, or differs by size or modification time from the one `known`
    # (or is known only as deleted), with the file's lstat: only these need hashing.
    changed: dict[str, os.stat_result] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # expected names that have no file (in the order given)
    # The scan's refused entries, and files whose name the pipeline refuses (code bad-name).
    refused: dict[str, ReasonCode] = field(default_factory=dict)

    @property
    def present(self) -> set[str]:
        return self.scan.files


def tenant_folders(zone: LandingZone) -> list[str]:
    """The tenants that have a folder in the landing zone (folders named as a tenant id can be), sorted; none
    when the landing zone itself is not a folder."""
    if not zone.root.is_dir():
        return []
    return sorted(p.name for p in zone.root.iterdir() if p.is_dir() and TENANT_PATTERN.fullmatch(p.name))


def scan_changes(zone: LandingZone, tenant_id: str, known: Mapping[str, Any],
                 expected: Iterable[str] = ()) -> LandingChanges:
    """Walk the tenant's folder once and compare it with the ledger (see `compare`). Raises
    LandingZoneUnavailable as LandingZone.scan: an outage is never read as removed files."""
    return compare(zone.scan(tenant_id), known, expected)


def compare(scan: LandingScan, known: Mapping[str, Any], expected: Iterable[str] = ()) -> LandingChanges:
    """The landing-zone rule, in one place: which files are dropped (new or changed) and which documents lost
    their file.

    `known` maps document names to their latest upload (anything with `is_delete`, `size_bytes` and
    `file_mtime_ns`, such as a ledger Upload); `expected` are the names of documents that should have a file.
    A file is changed when `known` has no live upload for it, or its size, modification time or type differ
    from those recorded (equality only, never a comparison of clocks).
    """
    changes = LandingChanges(scan=scan, refused=dict(scan.refused))
    for raw_name in sorted(scan.files):
        info = scan.stats[raw_name]
        upload = known.get(raw_name)
        if (upload is not None and not upload.is_delete and upload.size_bytes == info.st_size
                and upload.file_mtime_ns == info.st_mtime_ns and stat.S_ISREG(info.st_mode)):
            continue  # recorded as it is (a name the ledger holds was validated when recorded)
        try:
            name = validate_document_name(raw_name)
        except InvalidName:
            name = None
        if name != raw_name:  # refused, or normalised to a name that is not this file's
            changes.refused[raw_name] = ReasonCode.BAD_NAME
            continue
        changes.changed[name] = info
    changes.missing = [name for name in expected if name not in scan.files]
    return changes
