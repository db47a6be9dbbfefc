"""The one landing-zone rule (`work.landing_scan`): which files were dropped into a tenant's folder (new, or changed
by size or modification time) and which expected documents lost their file, on real folders; an unreadable landing
zone is an outage, never removals."""

import os

import pytest

from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.stores.landing_zone import LandingZone, LandingZoneUnavailable
from ingest_pipeline.stores.ledger import Upload
from ingest_pipeline.work.landing_scan import compare, scan_changes, tenant_folders

TENANT = "acme"


def landed(zone: LandingZone, name: str, text: str = "some text") -> os.stat_result:
    path = zone.root / TENANT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return os.lstat(path)


def recorded(name: str, info: os.stat_result | None, upload_id: int = 1, is_delete: bool = False) -> Upload:
    """The upload the ledger would hold for the file as `info` saw it (None: a deletion)."""
    return Upload(upload_id=upload_id, tenant_id=TENANT, doc_id=f"doc-{name}", doc_name=name,
                  content_sha256=None if is_delete else "0" * 64, is_delete=is_delete, partition_month="2026-12-01",
                  size_bytes=None if info is None else info.st_size,
                  file_mtime_ns=None if info is None else info.st_mtime_ns)


@pytest.fixture
def zone(tmp_path) -> LandingZone:
    (tmp_path / "landing" / TENANT).mkdir(parents=True)
    return LandingZone(tmp_path / "landing")


def test_a_file_recorded_as_it_is_is_not_dropped_and_new_files_are(zone):
    known = {"kept.txt": recorded("kept.txt", landed(zone, "kept.txt"))}
    landed(zone, "new.txt")
    landed(zone, "deep/down/new.md")
    changes = scan_changes(zone, TENANT, known)
    assert sorted(changes.changed) == ["deep/down/new.md", "new.txt"]
    assert changes.present == {"kept.txt", "new.txt", "deep/down/new.md"}
    assert changes.missing == [] and changes.refused == {}
    assert changes.changed["new.txt"].st_size == len("some text")  # the lstat to hash it with


def test_a_file_changed_by_size_or_by_modification_time_is_dropped_again(zone):
    known = {name: recorded(name, landed(zone, name)) for name in ("sized.txt", "touched.txt", "same.txt")}
    landed(zone, "sized.txt", "longer text than before")
    info = os.lstat(zone.root / TENANT / "touched.txt")
    os.utime(zone.root / TENANT / "touched.txt", ns=(info.st_atime_ns, info.st_mtime_ns + 1_000))  # same size
    changes = scan_changes(zone, TENANT, known)
    assert sorted(changes.changed) == ["sized.txt", "touched.txt"]


def test_a_file_known_only_as_deleted_is_dropped_when_it_comes_back(zone):
    info = landed(zone, "back.txt")
    changes = scan_changes(zone, TENANT, {"back.txt": recorded("back.txt", None, is_delete=True)})
    assert list(changes.changed) == ["back.txt"] and changes.changed["back.txt"].st_ino == info.st_ino


def test_expected_documents_without_a_file_are_the_removed_ones_in_the_order_given(zone):
    known = {name: recorded(name, landed(zone, name)) for name in ("a.txt", "b.txt", "c.txt")}
    (zone.root / TENANT / "c.txt").unlink()
    (zone.root / TENANT / "a.txt").unlink()
    changes = scan_changes(zone, TENANT, known, expected=["c.txt", "b.txt", "a.txt", "never-landed.txt"])
    assert changes.missing == ["c.txt", "a.txt", "never-landed.txt"]
    assert changes.changed == {}


def test_names_the_pipeline_refuses_links_and_special_files_are_refused_never_dropped(zone, tmp_path):
    folder = zone.root / TENANT
    for name in (".hidden.txt", "back\\slash.txt", "bell\x07.txt"):
        (folder / name).write_text("refused by name")
    outside = tmp_path / "outside.txt"
    outside.write_text("never read")
    (folder / "link.txt").symlink_to(outside)
    os.mkfifo(folder / "pipe.txt")
    changes = scan_changes(zone, TENANT, {}, expected=["link.txt"])
    assert changes.changed == {}
    assert changes.refused == {".hidden.txt": ReasonCode.BAD_NAME, "back\\slash.txt": ReasonCode.BAD_NAME,
                               "bell\x07.txt": ReasonCode.BAD_NAME, "link.txt": ReasonCode.SYMLINK,
                               "pipe.txt": ReasonCode.SPECIAL_FILE}
    assert changes.missing == ["link.txt"]  # a link is not the document's file


def test_a_recorded_file_replaced_by_a_fifo_is_refused(zone):
    known = {"doc.txt": recorded("doc.txt", landed(zone, "doc.txt"))}
    (zone.root / TENANT / "doc.txt").unlink()
    os.mkfifo(zone.root / TENANT / "doc.txt")
    changes = scan_changes(zone, TENANT, known, expected=["doc.txt"])
    assert changes.refused == {"doc.txt": ReasonCode.SPECIAL_FILE}
    assert changes.changed == {} and changes.missing == ["doc.txt"]


@pytest.mark.parametrize("outage", ["no landing zone", "no tenant folder", "tenant folder is a file",
                                    "unreadable tenant folder"])
def test_an_unavailable_landing_zone_is_an_outage_never_removals(zone, outage):
    known = {"doc.txt": recorded("doc.txt", landed(zone, "doc.txt"))}
    folder = zone.root / TENANT
    if outage == "no landing zone":
        zone = LandingZone(zone.root.parent / "unmounted")
    elif outage == "no tenant folder":
        (folder / "doc.txt").unlink()
        folder.rmdir()
    elif outage == "tenant folder is a file":
        (folder / "doc.txt").unlink()
        folder.rmdir()
        folder.write_text("not a folder")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any folder")
        folder.chmod(0)
    try:
        with pytest.raises(LandingZoneUnavailable, match="nothing was deleted"):
            scan_changes(zone, TENANT, known, expected=["doc.txt"])
    finally:
        if folder.is_dir():
            folder.chmod(0o755)


def test_compare_is_the_rule_on_a_listing_taken_once(zone):
    known = {"doc.txt": recorded("doc.txt", landed(zone, "doc.txt"))}
    listing = zone.scan(TENANT)
    (zone.root / TENANT / "doc.txt").unlink()  # after the listing: the rule judges what was listed
    changes = compare(listing, known, expected=["doc.txt"])
    assert changes.changed == {} and changes.missing == [] and changes.scan is listing


def test_tenant_folders_are_the_folders_named_as_tenants(zone):
    for name in ("globex", "Not-A-Tenant", ".hidden"):
        (zone.root / name).mkdir()
    (zone.root / "initech").write_text("a file, not a folder")
    assert tenant_folders(zone) == ["acme", "globex"]
    assert tenant_folders(LandingZone(zone.root / "missing")) == []
