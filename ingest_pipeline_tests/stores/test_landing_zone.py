"""ingest_pipeline.stores.landing_zone on a real file system: atomic stores, scans that never follow a link or read
a special file, hashing through one descriptor, and a missing folder that is never read as "every file removed"."""

import hashlib
import os
import socket

import pytest

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import InvalidName
from ingest_pipeline.stores.landing_zone import (
    TEMPORARY_PREFIX,
    LandingZone,
    LandingZoneUnavailable,
    RefusedFile,
    hash_file,
)


@pytest.fixture
def zone(tmp_path) -> LandingZone:
    (tmp_path / "landing").mkdir()
    return LandingZone(tmp_path / "landing")


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.txt"
    path.write_bytes(b"first version\n")
    return path


def test_store_copies_the_file_under_the_tenant_and_replaces_it_whole(zone, source):
    target = zone.store("acme", "notes/q1.txt", source)
    assert target == zone.root / "acme" / "notes" / "q1.txt" == zone.path("acme", "notes/q1.txt")
    assert target.read_bytes() == b"first version\n"
    source.write_bytes(b"second version, longer than the first\n")
    assert zone.store("acme", "notes/q1.txt", source) == target
    assert target.read_bytes() == b"second version, longer than the first\n"
    # Nothing but the document: the temporary file it was written under is gone.
    assert sorted(p.name for p in target.parent.iterdir()) == ["q1.txt"]


def test_store_refuses_a_link_or_a_fifo_before_anything_is_written(zone, source, tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(source)
    with pytest.raises(RefusedFile, match="symbolic link") as refused:
        zone.store("acme", "link.txt", link)
    assert refused.value.code == ReasonCode.SYMLINK
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(RefusedFile, match="not a regular file") as refused:
        zone.store("acme", "pipe.txt", fifo)  # opened without blocking: no writer needed to get here
    assert refused.value.code == ReasonCode.SPECIAL_FILE
    assert not (zone.root / "acme").exists()


@pytest.mark.parametrize("tenant, name", [("Acme", "a.txt"), ("../acme", "a.txt"), ("acme", "../a.txt"),
                                          ("acme", "/etc/passwd"), ("acme", ".hidden")])
def test_names_are_validated_before_any_path_is_built(zone, source, tenant, name):
    with pytest.raises(InvalidName):
        zone.store(tenant, name, source)
    assert list(zone.root.iterdir()) == []


def test_a_scan_lists_regular_files_and_refuses_links_and_special_files_without_following_them(zone, source,
                                                                                                 tmp_path):
    folder = zone.tenant_folder("acme")
    zone.store("acme", "a.txt", source)
    zone.store("acme", "sub/b.md", source)
    (folder / f"{TEMPORARY_PREFIX}half-written").write_bytes(b"partial")  # an upload in progress
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not the tenant's")
    (folder / "linked-folder").symlink_to(outside)
    (folder / "sub" / "link.txt").symlink_to(source)
    os.mkfifo(folder / "pipe")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "sock"))  # the socket's file stays after it is closed

    scan = zone.scan("acme")
    assert scan.files == {"a.txt", "sub/b.md"} == zone.tenant_files("acme")
    assert scan.refused == {"linked-folder": ReasonCode.SYMLINK, "sub/link.txt": ReasonCode.SYMLINK,
                            "pipe": ReasonCode.SPECIAL_FILE, "sock": ReasonCode.SPECIAL_FILE}
    assert scan.stats["sub/b.md"].st_size == source.stat().st_size
    # Each folder: its mtime before listing, and the newest of it and its files.
    assert set(scan.folders) == {"", "sub"}
    mtime, newest = scan.folders["sub"]
    assert newest == max(mtime, scan.stats["sub/b.md"].st_mtime_ns)


def test_a_missing_landing_zone_or_tenant_folder_is_unavailable_never_empty(zone, tmp_path):
    with pytest.raises(LandingZoneUnavailable, match="the folder of tenant 'acme'.* is missing.*nothing was deleted"):
        zone.scan("acme")
    (zone.root / "acme").write_text("a file where the folder should be")
    with pytest.raises(LandingZoneUnavailable, match="is not a directory"):
        zone.tenant_files("acme")
    with pytest.raises(LandingZoneUnavailable, match="the landing zone .* is missing"):
        LandingZone(tmp_path / "unmounted").scan("acme")


def test_hash_file_reads_one_regular_file_through_one_descriptor(source, tmp_path):
    info, digest = hash_file(source)
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert info.st_size == source.stat().st_size and info.st_ino == source.stat().st_ino
    link = tmp_path / "link.txt"
    link.symlink_to(source)
    with pytest.raises(RefusedFile, match="'shown-name' is a symbolic link") as refused:
        hash_file(link, "shown-name")
    assert refused.value.code == ReasonCode.SYMLINK
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(RefusedFile) as refused:
        hash_file(tmp_path / "pipe")  # returns at once: a FIFO is never read
    assert refused.value.code == ReasonCode.SPECIAL_FILE
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "removed.txt")


def test_remove_says_whether_the_document_was_there(zone, source):
    zone.store("acme", "a.txt", source)
    assert zone.remove("acme", "a.txt") is True
    assert not zone.path("acme", "a.txt").exists()
    assert zone.remove("acme", "a.txt") is False
