"""The landing zone: uploaded documents as files under INGEST_HOME/landing/<tenant>/<name>."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import InvalidName, validate_document_name, validate_tenant

TEMPORARY_PREFIX = ".upload-"


class LandingZoneUnavailable(RuntimeError):
    """The landing zone (or a tenant's folder in it) is missing or unreadable. Never read as deletions."""


class RefusedFile(InvalidName):
    """A file the landing zone does not take in: a symbolic link, or not a regular file. `code` says which."""

    def __init__(self, message: str, code: ReasonCode):
        super().__init__(message)
        self.code = code


@dataclass
class LandingScan:
    """What one tenant's folder holds: its regular files (relative names, as found on disk), and the entries
    that are never read as documents, each with its ReasonCode: symbolic links (never followed, wherever they
    point) and FIFOs, sockets or devices."""

    files: set[str] = field(default_factory=set)
    refused: dict[str, ReasonCode] = field(default_factory=dict)
    # Each regular file's lstat as listed, by relative name.
    stats: dict[str, os.stat_result] = field(default_factory=dict)
    # Each folder by relative path ("" is the tenant's own): (its mtime_ns, taken before it was listed; the
    # newest mtime_ns of the folder and of its direct entries' files).
    folders: dict[str, tuple[int, int]] = field(default_factory=dict)


def hash_file(path: str | Path, name: str | None = None) -> tuple[os.stat_result, str]:
    """The file's stat and SHA-256, read through one descriptor opened without following a symbolic link and
    without blocking (a FIFO swapped in after a scan would hang a reader).

    Raises RefusedFile (code symlink or special-file, naming the file) for anything that is not a regular
    file, and FileNotFoundError for a file removed meanwhile.
    """
    name = name or str(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedFile(f"{name!r} is a symbolic link: links are never read", ReasonCode.SYMLINK) from None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile(f"{name!r} is not a regular file (a FIFO, socket or device): never read",
                              ReasonCode.SPECIAL_FILE)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return info, digest.hexdigest()


class LandingZone:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def tenant_files(self, tenant_id: str) -> set[str]:
        """The document names of the tenant's regular files, listed now (symbolic links are not files).

        A missing or unreadable landing zone or tenant folder raises LandingZoneUnavailable: an
        unmounted volume or a wrong working directory looks exactly like "every file was removed",
        and must never be taken for that.
        """
        return self.scan(tenant_id).files

    def tenant_folder(self, tenant_id: str) -> Path:
        """The tenant's folder in the landing zone."""
        return self.root / validate_tenant(tenant_id)

    def scan(self, tenant_id: str) -> LandingScan:
        """The tenant's folder, listed now without following a symbolic link: regular files, and the links
        and special files found (refused, with their code). Raises LandingZoneUnavailable as tenant_files."""
        folder = self.tenant_folder(tenant_id)
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

        found = LandingScan()
        pending = [(str(folder), "")]
        while pending:
            directory, prefix = pending.pop()
            try:
                mtime = newest = os.lstat(directory).st_mtime_ns
                with os.scandir(directory) as entries:
                    for entry in entries:
                        relative = prefix + entry.name
                        if entry.is_symlink():
                            found.refused[relative] = ReasonCode.SYMLINK
                        elif entry.is_dir(follow_symlinks=False):
                            pending.append((entry.path, relative + "/"))
                        elif entry.is_file(follow_symlinks=False):
                            if not entry.name.startswith(TEMPORARY_PREFIX):
                                try:
                                    info = entry.stat(follow_symlinks=False)
                                except FileNotFoundError:
                                    continue  # removed while we looked
                                found.files.add(relative)
                                found.stats[relative] = info
                                newest = max(newest, info.st_mtime_ns)
                        else:
                            found.refused[relative] = ReasonCode.SPECIAL_FILE
            except OSError as error:
                fail(error)
            found.folders[prefix.rstrip("/")] = (mtime, newest)
        return found

    def path(self, tenant_id: str, document_name: str) -> Path:
        return self.root / validate_tenant(tenant_id) / validate_document_name(document_name)

    def store(self, tenant_id: str, document_name: str, source: Path) -> Path:
        """Copy a file in atomically: readers see the old bytes or the new, never a partial file.

        A source that is a symbolic link (which could point anywhere, outside the upload) or not a regular
        file is refused with RefusedFile (code symlink or special-file), before anything is written.
        """
        target = self.path(tenant_id, document_name)
        with _open_regular_file(source, document_name) as src:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMPORARY_PREFIX)
            try:
                with os.fdopen(fd, "wb") as out:
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


def _open_regular_file(source: Path, document_name: str):
    """Open `source` for reading if it is a regular file and not a symbolic link; RefusedFile otherwise."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedFile(f"{document_name!r} is a symbolic link: links are never uploaded (upload the file "
                              "itself)", ReasonCode.SYMLINK) from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise RefusedFile(f"{document_name!r} is not a regular file (a FIFO, socket or device)",
                          ReasonCode.SPECIAL_FILE)
    return os.fdopen(descriptor, "rb")
