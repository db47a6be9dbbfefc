"""The landing zone: uploaded documents as files under INGEST_HOME/landing/<tenant>/<name>."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ingest_pipeline.core.ids import validate_document_name, validate_tenant

TEMPORARY_PREFIX = ".upload-"


class LandingZoneUnavailable(RuntimeError):
    """The landing zone (or a tenant's folder in it) is missing or unreadable. Never read as deletions."""


class LandingZone:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def tenant_files(self, tenant_id: str) -> set[str]:
        """The document names of the tenant's files, listed now.

        A missing or unreadable landing zone or tenant folder raises LandingZoneUnavailable: an
        unmounted volume or a wrong working directory looks exactly like "every file was removed",
        and must never be taken for that.
        """
        folder = self.root / validate_tenant(tenant_id)
        for path, what in ((self.root, "the landing zone"), (folder, f"the folder of tenant {tenant_id!r}")):
            if not path.is_dir():
                state = "is not a directory" if path.exists() else "is missing"
                raise LandingZoneUnavailable(
                    f"{what} {path} {state} (an unmounted volume, or another INGEST_HOME?); nothing was deleted"
                )

        def fail(error: OSError) -> None:
            raise LandingZoneUnavailable(
                f"the folder of tenant {tenant_id!r} in {self.root} cannot be read ({error.strerror or error}); "
                "nothing was deleted"
            )

        names = set()
        for directory, _, files in os.walk(folder, onerror=fail):
            for file in files:
                relative = Path(directory, file).relative_to(folder).as_posix()
                if not file.startswith(TEMPORARY_PREFIX):
                    names.add(relative)
        return names

    def path(self, tenant_id: str, document_name: str) -> Path:
        return self.root / validate_tenant(tenant_id) / validate_document_name(document_name)

    def store(self, tenant_id: str, document_name: str, source: Path) -> Path:
        """Copy a file in atomically: readers see the old bytes or the new, never a partial file."""
        target = self.path(tenant_id, document_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMPORARY_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def remove(self, tenant_id: str, document_name: str) -> bool:
        path = self.path(tenant_id, document_name)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed
