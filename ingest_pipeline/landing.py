"""The landing zone: uploaded documents as files under INGEST_HOME/landing/<tenant>/<name>."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ingest_pipeline.core.ids import validate_document_name, validate_tenant


class LandingZone:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, tenant_id: str, document_name: str) -> Path:
        return self.root / validate_tenant(tenant_id) / validate_document_name(document_name)

    def store(self, tenant_id: str, document_name: str, source: Path) -> Path:
        """Copy a file in atomically: readers see the old bytes or the new, never a partial file."""
        target = self.path(tenant_id, document_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
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
