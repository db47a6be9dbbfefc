"""The reliability suite (`make reliability`): each scenario records what it tried and what it found, and the
session ends with a summary table (and a JSON report) of faults injected and survived, bad inputs tried,
documents lost, duplicates and leaks found."""

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from ingest_pipeline.core import faults
from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline_tests.helpers import CORPUS, new_installation
from ingest_pipeline_tests.reliability.chaos import FaultProxy, ServiceProcess

REPORT_PATH_ENV = "INGEST_RELIABILITY_REPORT"
_RECORDS: list["Scenario"] = []
_STARTED = time.monotonic()


@dataclass
class Scenario:
    """What one test tried and what it found. Counts left at 0 mean "none of this kind in this scenario"."""

    name: str
    category: str = "fault"  # fault | bad-input | race | keys | isolation | leak-scan
    faults_injected: int = 0
    faults_survived: int = 0
    bad_inputs: int = 0
    documents_lost: int = 0
    duplicates: int = 0
    leaks: int = 0
    details: dict = field(default_factory=dict)
    outcome: str = "unknown"
    seconds: float = 0.0

    def survived(self, count: int = 1) -> None:
        """One more fault injected that the pipeline came through (the invariant held afterwards)."""
        self.faults_injected += count
        self.faults_survived += count

    def add_invariant(self, found: dict) -> None:
        """Add what `check_invariant` found to the scenario's totals."""
        self.documents_lost += found["documents_lost"]
        self.duplicates += found["duplicates"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or report.failed:
        item.stash.setdefault(_OUTCOME, []).append(report.outcome)
    return report


_OUTCOME = pytest.StashKey[list]()

LAST_MODULE = "test_leak_scan.py"  # scans every installation the session's other tests created


def pytest_collection_modifyitems(session, config, items):
    """The leak scan runs after every other test of the session, whatever the order of collection."""
    items.sort(key=lambda item: item.path.name == LAST_MODULE)  # stable: the others keep their order


@pytest.fixture
def scenario(request) -> Scenario:
    """Record of this test's scenario, collected into the session's reliability report."""
    record = Scenario(name=request.node.nodeid.split("::", 1)[-1])
    started = time.monotonic()
    yield record
    record.seconds = round(time.monotonic() - started, 1)
    outcomes = request.node.stash.get(_OUTCOME, [])
    record.outcome = "failed" if "failed" in outcomes else "passed" if outcomes else "unknown"
    _RECORDS.append(record)


def summary() -> dict:
    def total(name: str) -> int:
        return sum(getattr(record, name) for record in _RECORDS)

    return {
        "scenarios_run": len(_RECORDS),
        "scenarios_passed": sum(record.outcome == "passed" for record in _RECORDS),
        "faults_injected": total("faults_injected"),
        "faults_survived": total("faults_survived"),
        "bad_inputs_tried": total("bad_inputs"),
        "documents_lost": total("documents_lost"),
        "duplicates": total("duplicates"),
        "leaks_found": total("leaks"),
        "seconds": round(time.monotonic() - _STARTED, 1),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RECORDS:
        return
    totals = summary()
    terminalreporter.section("reliability summary")
    for name, value in totals.items():
        terminalreporter.write_line(f"{name.replace('_', ' '):<20} {value:>8}")
    terminalreporter.write_line("")
    terminalreporter.write_line(f"{'scenario':<70} {'category':<10} {'faults':>6} {'bad':>4} {'lost':>4} "
                                f"{'dup':>4} {'leaks':>5} {'s':>6} outcome")
    for record in _RECORDS:
        terminalreporter.write_line(
            f"{record.name[:70]:<70} {record.category:<10} {record.faults_survived:>2}/{record.faults_injected:<3} "
            f"{record.bad_inputs:>4} {record.documents_lost:>4} {record.duplicates:>4} {record.leaks:>5} "
            f"{record.seconds:>6} {record.outcome}"
        )
    path = Path(os.environ.get(REPORT_PATH_ENV, config.rootpath / "reliability-report.json"))
    path.write_text(json.dumps({"summary": totals, "scenarios": [asdict(r) for r in _RECORDS]}, indent=2,
                               default=str) + "\n")
    terminalreporter.write_line(f"report: {path}")


# ---- fault fixtures ----------------------------------------------------------------------------------------

SMALL_FILES = ("acme/apache-license-2.0.txt", "globex/pip-dependency-resolution.md")


@pytest.fixture
def small_docs(tmp_path) -> Path:
    """Two real documents (txt, md): more than one upsert batch of 32 chunks, quick to embed."""
    folder = tmp_path / "small-docs"
    folder.mkdir()
    for name in SMALL_FILES:
        (folder / Path(name).name).write_bytes((CORPUS / name).read_bytes())
    return folder



@pytest.fixture
def fault_state(tmp_path, monkeypatch) -> Path:
    """A directory for the fault injector's markers (INGEST_FAULTS_STATE); INGEST_FAULTS starts unset."""
    state = tmp_path / "fault-state"
    state.mkdir()
    monkeypatch.setenv(faults.STATE_ENV, str(state))
    monkeypatch.delenv(faults.ENV, raising=False)
    return state


@pytest.fixture(scope="session")
def killable_service(tmp_path_factory):
    """A private cyborgdb-service (authentication on) that tests may SIGKILL and start again; the shared
    `cyborgdb_service` of the main conftest is never touched."""
    service = ServiceProcess(tmp_path_factory.mktemp("killable-cyborgdb"), secrets.token_hex(24))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def service_proxy(killable_service):
    """The fault-injecting proxy in front of the private service (started again if a test left it down)."""
    if not killable_service.healthy():
        killable_service.start()
    proxy = FaultProxy(killable_service.port)
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_pipeline(tmp_path, monkeypatch, service_proxy, killable_service):
    """An installation on cyborgdb-service, reached through the fault-injecting proxy."""
    installation = new_installation(tmp_path, monkeypatch, "service",
                             {"url": service_proxy.url, "api_key": killable_service.root_key})
    yield installation
    stop_embedded_postgres(installation.home)


# ---- clean-run references ----------------------------------------------------------------------------------

_SWAPPED = ("INGEST_HOME", "INGEST_PG_DSN", "INGEST_CYBORGDB_URL", "INGEST_CYBORGDB_API_KEY", "INGEST_MASTER_KEY",
            "DAGSTER_HOME", "INGEST_DAGSTER_PG_URL", "INGEST_DAGSTER_STORAGE_DIR", "INGEST_DAGSTER_LOGS_DIR",
            faults.ENV, faults.STATE_ENV)


class CleanReferences:
    """Search fingerprints of clean runs (no fault) on the same documents, computed once per session, backend and
    set of files, each in an installation of its own, then compared with what a faulted tenant answers."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[tuple, list] = {}

    def fingerprint(self, pipeline, files) -> list:
        from ingest_pipeline import cli
        from ingest_pipeline_tests.reliability.invariant import search_fingerprint

        files = sorted(Path(f) for f in files)
        key = (pipeline.backend, tuple((f.name, f.stat().st_size) for f in files))
        if key in self._cache:
            return self._cache[key]
        saved = {name: os.environ.get(name) for name in _SWAPPED}
        home = self.root / f"reference-{len(self._cache)}"
        try:
            for name in _SWAPPED:
                os.environ.pop(name, None)
            os.environ.update({"INGEST_HOME": str(home), "INGEST_MASTER_KEY": generate_master_key()})
            for name in ("INGEST_CYBORGDB_URL", "INGEST_CYBORGDB_API_KEY"):
                if name in pipeline.env:
                    os.environ[name] = pipeline.env[name]
            tenant = f"reference-{secrets.token_hex(3)}"
            cli.upload(tenant, [str(f) for f in files])
            summary = cli.ingest(tenant, show_progress=False)
            assert summary["failed_runs"] == 0, summary["runs"]
            reference = search_fingerprint(_Searcher(), tenant)
        finally:
            stop_embedded_postgres(home)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        assert any(reference), "the clean run found nothing"
        self._cache[key] = reference
        return reference


class _Searcher:
    def search(self, tenant: str, query: str, top_k: int = 5) -> list[dict]:
        from ingest_pipeline import cli

        return cli.search(tenant, [query], top_k)[0]


@pytest.fixture(scope="session")
def clean_references(tmp_path_factory) -> CleanReferences:
    return CleanReferences(tmp_path_factory.mktemp("clean-references"))
