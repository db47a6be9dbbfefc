"""Uploads (`work.uploads`) on a real ledger: files copied into the landing zone and recorded once per content,
deletions, refused files, erased tenants refused, and the sweep of files dropped into or removed from the landing
zone that `ingest-pipeline ingest` makes before its runs."""

import os
import uuid
from dataclasses import dataclass

import pytest

from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.core.extraction import ReasonCode
from ingest_pipeline.core.ids import InvalidName, document_id
from ingest_pipeline.runtime.instance import prepare_environment
from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline.stores.landing_zone import LandingZone, LandingZoneUnavailable, RefusedFile
from ingest_pipeline.stores.ledger import Ledger
from ingest_pipeline.work.uploads import (
    LandingSweep,
    current_month,
    files_to_upload,
    record_dropped_files,
    sweep_landing_zone,
    upload_files,
)


@dataclass
class Installation:
    ledger: Ledger
    zone: LandingZone
    tenant: str
    other: str

    def uploads(self, tenant: str | None = None) -> list[tuple[str, bool, str | None]]:
        """(document, is_delete, content_sha256) of each upload event of the tenant, in order."""
        with self.ledger.connect() as conn:
            rows = conn.execute("SELECT doc_name, is_delete, content_sha256 FROM ingest.uploads WHERE tenant_id = %s"
                                " ORDER BY upload_id", (tenant or self.tenant,)).fetchall()
        return [(row["doc_name"], row["is_delete"], row["content_sha256"]) for row in rows]

    def register_latest(self, tenant: str) -> None:
        """Make the tenant's latest uploads live documents, as `raw_documents` would."""
        with self.ledger.connect() as conn, conn.transaction():
            for upload in self.ledger.uploads.latest_by_name(conn, tenant).values():
                self.ledger.documents.register(conn, upload, upload.content_sha256)

    def tombstone(self, tenant: str) -> None:
        """The first step of an erasure: the tenant's tombstone (as `work.erasure` records it)."""
        with self.ledger.connect() as conn, conn.transaction():
            conn.execute("INSERT INTO ingest.tenant_erasures (tenant_id) VALUES (%s)", (tenant,))


@pytest.fixture(scope="module")
def ledger_and_zone(tmp_path_factory):
    """One installation (embedded Postgres, landing zone) for the module: its tests use tenants of their own."""
    home = tmp_path_factory.mktemp("uploads") / "home"
    with pytest.MonkeyPatch.context() as env:
        for name in ("INGEST_HOME", "INGEST_PG_DSN", "INGEST_CYBORGDB_URL", "INGEST_CYBORGDB_API_KEY",
                     "INGEST_MASTER_KEY", "DAGSTER_HOME"):
            env.delenv(name, raising=False)
        env.setenv("INGEST_HOME", str(home))
        env.setenv("INGEST_MASTER_KEY", generate_master_key())
        settings, ledger = prepare_environment()
        yield ledger, LandingZone(settings.landing_dir)
        stop_embedded_postgres(home)


@pytest.fixture
def installation(ledger_and_zone) -> Installation:
    suffix = uuid.uuid4().hex[:6]
    return Installation(*ledger_and_zone, f"acme-{suffix}", f"globex-{suffix}")


@pytest.fixture
def folder(tmp_path):
    source = tmp_path / "to-upload"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "sub" / "b.md").write_text("# beta")
    (source / ".hidden").write_text("never uploaded")
    return source


def test_files_are_copied_in_and_recorded_once_per_content(installation, folder):
    it = installation
    assert upload_files(it.ledger, it.zone, it.tenant, [str(folder)]) == {
        "uploaded": ["a.txt", "sub/b.md"], "unchanged": [], "deleted": [], "not_found": [], "refused": []}
    assert (it.zone.root / it.tenant / "sub" / "b.md").read_text() == "# beta"
    assert not (it.zone.root / it.tenant / ".hidden").exists()
    assert upload_files(it.ledger, it.zone, it.tenant, [str(folder)])["unchanged"] == ["a.txt", "sub/b.md"]

    (folder / "a.txt").write_text("alpha, changed")
    assert upload_files(it.ledger, it.zone, it.tenant, [str(folder / "a.txt")])["uploaded"] == ["a.txt"]
    events = it.uploads()
    assert [(name, deleted) for name, deleted, _ in events] == [("a.txt", False), ("sub/b.md", False),
                                                                 ("a.txt", False)]
    assert events[0][2] != events[2][2]
    with it.ledger.connect() as conn:
        latest = it.ledger.uploads.latest(conn, document_id(it.tenant, "a.txt"))
    landed = os.lstat(it.zone.path(it.tenant, "a.txt"))
    assert (latest.size_bytes, latest.file_mtime_ns, latest.partition_month) == (
        landed.st_size, landed.st_mtime_ns, current_month())


def test_a_landed_file_that_differs_from_its_upload_is_copied_in_again(installation, folder):
    it = installation
    upload_files(it.ledger, it.zone, it.tenant, [str(folder / "a.txt")])
    it.zone.path(it.tenant, "a.txt").write_text("overwritten behind the pipeline's back")
    assert upload_files(it.ledger, it.zone, it.tenant, [str(folder / "a.txt")])["uploaded"] == ["a.txt"]
    assert it.zone.path(it.tenant, "a.txt").read_text() == "alpha"


def test_a_deletion_removes_the_file_first_and_an_unknown_document_is_not_found(installation, folder):
    it = installation
    upload_files(it.ledger, it.zone, it.tenant, [str(folder)])
    result = upload_files(it.ledger, it.zone, it.tenant, ["sub/b.md", "never.txt"], delete=True)
    assert (result["deleted"], result["not_found"]) == (["sub/b.md"], ["never.txt"])
    assert not it.zone.path(it.tenant, "sub/b.md").exists()
    assert it.uploads()[-1] == ("sub/b.md", True, None)
    assert upload_files(it.ledger, it.zone, it.tenant, ["sub/b.md"], delete=True)["not_found"] == ["sub/b.md"]
    with pytest.raises(InvalidName):
        upload_files(it.ledger, it.zone, it.tenant, ["../escape.txt"], delete=True)


def test_links_special_files_and_clashing_names_are_refused_before_anything_is_copied(installation, folder, tmp_path):
    it = installation
    (folder / "link.txt").symlink_to(folder / "a.txt")
    os.mkfifo(folder / "pipe")
    found, refused = files_to_upload([str(folder)])
    assert [name for name, _ in found] == ["a.txt", "sub/b.md"]
    assert refused == ["link.txt (symlink)", "pipe (special-file)"]
    result = upload_files(it.ledger, it.zone, it.tenant, [str(folder)])
    assert result["refused"] == refused and result["uploaded"] == ["a.txt", "sub/b.md"]

    with pytest.raises(RefusedFile, match="symbolic link") as refusal:
        upload_files(it.ledger, it.zone, it.other, [str(folder / "link.txt")])
    assert refusal.value.code == "symlink"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.txt").write_text("another alpha")
    with pytest.raises(ValueError, match="several files would be uploaded as a.txt"):
        upload_files(it.ledger, it.zone, it.other, [str(folder / "a.txt"), str(tmp_path / "elsewhere" / "a.txt")])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        upload_files(it.ledger, it.zone, it.other, [str(tmp_path / "absent")])
    assert it.uploads(it.other) == [] and not (it.zone.root / it.other).exists()


def test_an_erased_tenant_is_refused_nothing_copied_nothing_recorded(installation, folder):
    it = installation
    upload_files(it.ledger, it.zone, it.tenant, [str(folder / "a.txt")])
    it.tombstone(it.tenant)
    before = it.uploads()
    for delete, paths in ((False, [str(folder / "sub")]), (True, ["a.txt"])):
        with pytest.raises(TenantErased):
            upload_files(it.ledger, it.zone, it.tenant, paths, delete=delete)
    assert it.uploads() == before
    assert not it.zone.path(it.tenant, "b.md").exists() and it.zone.path(it.tenant, "a.txt").exists()
    with pytest.raises(TenantErased):
        record_dropped_files(it.ledger, it.zone, it.tenant, limit=10)


def test_dropped_files_are_recorded_once_and_touched_ones_are_not_recorded_again(installation):
    it = installation
    folder = it.zone.root / it.tenant
    (folder / "deep" / "down").mkdir(parents=True)
    (folder / "one.txt").write_text("one")
    (folder / "deep" / "down" / "two.txt").write_text("two")
    (folder / ".hidden").write_text("refused")
    found = record_dropped_files(it.ledger, it.zone, it.tenant, limit=1)
    assert (found.recorded, found.complete) == (["deep/down/two.txt"], False)
    assert found.refused == {".hidden": ReasonCode.BAD_NAME}
    assert record_dropped_files(it.ledger, it.zone, it.tenant, limit=10).recorded == ["one.txt"]

    stat = os.lstat(folder / "one.txt")
    os.utime(folder / "one.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: the same bytes
    again = record_dropped_files(it.ledger, it.zone, it.tenant, limit=10)
    assert again.recorded == [] and again.complete
    assert [name for name, _, _ in it.uploads()] == ["deep/down/two.txt", "one.txt"]
    with it.ledger.connect() as conn:
        latest = it.ledger.uploads.latest(conn, document_id(it.tenant, "one.txt"))
    assert latest.file_mtime_ns == stat.st_mtime_ns + 10**9  # noted: the next scan does not hash it


def test_the_sweep_finds_removed_files_by_partition_and_skips_erased_tenants(installation, folder):
    it = installation
    upload_files(it.ledger, it.zone, it.tenant, [str(folder)])
    upload_files(it.ledger, it.zone, it.other, [str(folder / "a.txt")])
    it.register_latest(it.tenant)
    it.register_latest(it.other)
    it.zone.path(it.tenant, "sub/b.md").unlink()
    (it.zone.root / it.tenant / "dropped.txt").write_text("dropped in by another system")
    it.tombstone(it.other)
    mine = {it.tenant, it.other}

    sweep = sweep_landing_zone(it.ledger, it.zone)  # every tenant (other tests' too: look at this test's)
    assert {partition for partition in sweep.removed if partition[0] in mine} == {(it.tenant, current_month())}
    assert [str(exc) for exc in sweep.skipped if it.other in str(exc)] and \
        not [exc for exc in sweep.skipped if it.tenant in str(exc)]
    assert sweep.outage is None
    assert it.uploads()[-1][:2] == ("dropped.txt", False)
    assert sweep_landing_zone(it.ledger, it.zone, it.tenant).removed == {(it.tenant, current_month())}


def test_an_unreadable_folder_of_a_tenant_with_documents_is_an_outage_never_removals(installation, folder):
    it = installation
    upload_files(it.ledger, it.zone, it.tenant, [str(folder)])
    it.register_latest(it.tenant)
    (it.zone.root / it.other).mkdir()  # a tenant without documents: an empty or missing folder loses nothing
    moved = it.zone.root.parent / f"unmounted-{it.tenant}"
    (it.zone.root / it.tenant).rename(moved)
    try:
        sweep = sweep_landing_zone(it.ledger, it.zone, it.tenant)
        assert isinstance(sweep.outage, LandingZoneUnavailable) and it.tenant in str(sweep.outage)
        assert "nothing was deleted" in str(sweep.outage) and sweep.removed == set()
        assert sweep_landing_zone(it.ledger, it.zone, it.other) == LandingSweep()
        with pytest.raises(LandingZoneUnavailable):
            record_dropped_files(it.ledger, it.zone, it.tenant, limit=10,
                                 live_documents=it.ledger.documents.live(it.tenant))
    finally:
        moved.rename(it.zone.root / it.tenant)
