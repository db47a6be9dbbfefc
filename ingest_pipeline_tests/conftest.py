"""Fixtures that run the pipeline against real engines: embedded PostgreSQL, CyborgDB (embedded and
the REST service on 127.0.0.1), the bundled model and a Dagster instance on dagster-postgres."""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# The bundled model is on disk; nothing may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ingest_pipeline.runtime import settings
from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline_tests.daemons import Daemons
from ingest_pipeline_tests.helpers import CORPUS, free_port, new_installation


@pytest.fixture(scope="session", autouse=True)
def initialized_pgdata(tmp_path_factory):
    """An installation's embedded PostgreSQL, started in this process, starts from a copy of one data directory
    initialized for the session, instead of running initdb again (a second or more per installation).

    The copy is of a stopped cluster that holds nothing but what initdb wrote; the server started on it, the
    migrations and everything after are each installation's own. initdb itself still runs here, in every
    subprocess that starts an installation's server first, and for servers started by a direct call.
    """
    template_home = tmp_path_factory.mktemp("pgdata-template")
    settings.embedded_postgres_uri(template_home)
    stop_embedded_postgres(template_home)
    template = template_home / "pgdata"
    (template / ".handle_pids.json").unlink(missing_ok=True)  # the processes that used the template's server
    (template / "log").unlink(missing_ok=True)  # the template server's log
    initialize = settings.embedded_postgres_uri

    def from_template(home):
        pgdata = Path(home) / "pgdata"
        if not pgdata.exists():
            Path(home).mkdir(parents=True, exist_ok=True)
            copy = Path(home) / f".pgdata-{os.getpid()}"
            subprocess.run(["cp", "-a", str(template), str(copy)], check=True)  # -a: owned by the server's user
            try:
                copy.rename(pgdata)
            except OSError:  # created meanwhile by another process: use that one
                subprocess.run(["rm", "-rf", str(copy)], check=True)
        return initialize(home)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "embedded_postgres_uri", from_template)
        yield template


@pytest.fixture(scope="session")
def cyborgdb_service(tmp_path_factory):
    """A real cyborgdb-service bound to loopback, with authentication on (a root key)."""
    storage = tmp_path_factory.mktemp("cyborgdb-service")
    port, root_key = free_port(), secrets.token_hex(24)
    env = {**os.environ, "CYBORGDB_DB_TYPE": "disk", "CYBORGDB_DISK_PATH": str(storage),
           "CYBORGDB_SERVICE_ROOT_KEY": root_key, "CYBORGDB_SERVICE_LOG_LEVEL": "WARNING",
           "PORT": str(port)}  # the service keys its single-worker lock by PORT
    log = open(storage / "service.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "cyborgdb_service.app:app", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as response:
                if json.load(response).get("status") == "healthy":
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"cyborgdb-service did not start: {(storage / 'service.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield {"url": url, "api_key": root_key, "storage": storage}
    process.terminate()
    process.wait(timeout=20)
    log.close()


@pytest.fixture(params=["embedded", "service"])
def pipeline(request, tmp_path, monkeypatch):
    """The pipeline on each CyborgDB backend in turn: for what the index does (writes, deletes, searches,
    rebuilds, isolation, what reaches its storage). A test whose subject is settled before the index (quarantine,
    keys, the tenant's lock in Postgres, a fault injected at our own seam) takes `embedded_pipeline`."""
    service = request.getfixturevalue("cyborgdb_service") if request.param == "service" else None
    installation = new_installation(tmp_path, monkeypatch, request.param, service)
    yield installation
    stop_embedded_postgres(installation.home)


@pytest.fixture
def embedded_pipeline(tmp_path, monkeypatch):
    """The pipeline on the embedded defaults only."""
    installation = new_installation(tmp_path, monkeypatch, "embedded", None)
    yield installation
    stop_embedded_postgres(installation.home)


@pytest.fixture
def docs(tmp_path) -> Path:
    """A small corpus: three real documents from the bundled sample (txt, md, pdf) and one written here."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("acme/apache-license-2.0.txt", "globex/pip-dependency-resolution.md", "acme/shared-mime-info-spec.pdf",
                 "globex/debian-users-and-groups.html"):
        (folder / Path(name).name).write_bytes((CORPUS / name).read_bytes())
    return folder


@pytest.fixture
def daemons(tmp_path):
    """Real `dagster-daemon run` processes on the test's installation (request the pipeline fixture first)."""
    log_dir = tmp_path / "daemon-logs"
    log_dir.mkdir()
    started = Daemons(log_dir)
    try:
        yield started
    finally:
        started.stop_all()
