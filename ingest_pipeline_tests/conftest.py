"""Fixtures that run the pipeline against real engines: embedded PostgreSQL, CyborgDB (embedded and
the REST service on 127.0.0.1), the bundled model and a Dagster instance on dagster-postgres."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The bundled model is on disk; nothing may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import ingest_pipeline
from ingest_pipeline import cli
from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline_tests.daemons import Daemons

CORPUS = Path(ingest_pipeline.__file__).parent / "sample_corpus"
ENV_VARS = ("INGEST_HOME", "INGEST_PG_DSN", "INGEST_CYBORGDB_URL", "INGEST_CYBORGDB_API_KEY", "INGEST_MASTER_KEY",
            "DAGSTER_HOME")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def cyborgdb_service(tmp_path_factory):
    """A real cyborgdb-service bound to loopback, with authentication on (a root key)."""
    storage = tmp_path_factory.mktemp("cyborgdb-service")
    port, root_key = _free_port(), secrets.token_hex(24)
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


@dataclass
class Pipeline:
    """One installation: its own INGEST_HOME, master key and Postgres; tenants named uniquely per test."""

    home: Path
    backend: str
    env: dict
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def tenant(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def upload(self, tenant: str, *paths, delete: bool = False) -> dict:
        return cli.upload(tenant, [str(p) for p in paths], delete=delete)

    def ingest(self, tenant: str | None = None) -> dict:
        summary = cli.ingest(tenant, show_progress=False)
        assert summary["failed_runs"] == 0, summary["runs"]
        return summary

    def search(self, tenant: str, query: str, top_k: int = 5) -> list[dict]:
        return cli.search(tenant, [query], top_k)[0]

    def status(self, tenant: str) -> dict:
        return cli.status(tenant)["tenants"][tenant]

    def ledger(self):
        from ingest_pipeline.runtime.instance import prepare_environment

        return prepare_environment()[1]

    def run_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "ingest_pipeline.cli", *args], env={**os.environ, **self.env},
            capture_output=True, text=True, timeout=600,
        )
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result


# Every installation this session created (home, environment with its master key), for the final leak scan.
INSTALLATIONS: list[Pipeline] = []


def _pipeline(tmp_path, monkeypatch, backend: str, service: dict | None) -> Pipeline:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    env = {"INGEST_HOME": str(tmp_path / "home"), "INGEST_MASTER_KEY": generate_master_key()}
    if backend == "service":
        env |= {"INGEST_CYBORGDB_URL": service["url"], "INGEST_CYBORGDB_API_KEY": service["api_key"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    installation = Pipeline(home=tmp_path / "home", backend=backend, env=env)
    INSTALLATIONS.append(installation)
    return installation


@pytest.fixture(params=["embedded", "service"])
def pipeline(request, tmp_path, monkeypatch):
    """The pipeline on each CyborgDB backend in turn."""
    service = request.getfixturevalue("cyborgdb_service") if request.param == "service" else None
    installation = _pipeline(tmp_path, monkeypatch, request.param, service)
    yield installation
    stop_embedded_postgres(installation.home)


@pytest.fixture
def embedded_pipeline(tmp_path, monkeypatch):
    """The pipeline on the embedded defaults only."""
    installation = _pipeline(tmp_path, monkeypatch, "embedded", None)
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
