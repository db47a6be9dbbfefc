"""The search service against real engines: one installation per CyborgDB backend, two tenants ingested once, and
`ingest-pipeline serve` running in its own process on a free loopback port (a real uvicorn, a real HTTP client)."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline_tests.helpers import CORPUS, Pipeline, free_port, new_installation

TENANT_DOCS = {
    "acme": ["acme/apache-license-2.0.txt", "acme/systemd-uids-gids.md"],
    "globex": ["globex/pip-dependency-resolution.md", "globex/xz-file-format.txt"],
}


@dataclass
class Service:
    """The running service and the installation it reads."""

    pipeline: Pipeline
    url: str
    process: subprocess.Popen
    log_path: Path
    tenants: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)
    secrets_seen: list[str] = field(default_factory=list)  # every key and query a test sent, for the leak scans

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **options)

    def new_key(self, tenant: str, *extra: str) -> str:
        created = json.loads(self.pipeline.cli("api-key", "create", "--tenant", self.tenants[tenant], "--json",
                                               *extra).stdout)
        self.secrets_seen.append(created["key"])
        return created["key"]

    def search(self, key: str, body, **options) -> httpx.Response:
        fields = body if isinstance(body, dict) else {}
        for text in [fields.get("query")] + list(fields.get("queries") or []):
            if isinstance(text, str) and text:
                self.secrets_seen.append(text)
        with self.client() as client:
            return client.post("/v1/search", json=body, headers={"Authorization": f"Bearer {key}"}, **options)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the service exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the service did not get ready: {log_path.read_text()[-3000:]}")


def start_service(pipeline: Pipeline, log_path: Path, extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **pipeline.env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "INGEST_API_MAX_BATCH": "8", "INGEST_API_MAX_BODY_BYTES": "16384", **(extra_env or {})}
    log = open(log_path, "ab")  # noqa: SIM115 - the process keeps it
    process = subprocess.Popen([sys.executable, "-m", "ingest_pipeline.cli", "serve", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log_path)
    return process, url


@pytest.fixture(scope="module", params=["embedded", "service"])
def served(request, tmp_path_factory):
    """Two tenants (acme, globex) ingested on one backend, and the service reading them; stopped at the end."""
    backend = request.param
    cyborg = request.getfixturevalue("cyborgdb_service") if backend == "service" else None
    tmp = tmp_path_factory.mktemp(f"service-{backend}")
    patch = pytest.MonkeyPatch()
    pipeline = new_installation(tmp, patch, backend, cyborg)
    tenants = {name: pipeline.tenant(name) for name in TENANT_DOCS}
    for name, docs in TENANT_DOCS.items():
        folder = tmp / name
        folder.mkdir()
        for doc in docs:
            (folder / Path(doc).name).write_bytes((CORPUS / doc).read_bytes())
        pipeline.upload(tenants[name], *sorted(folder.iterdir()))
    pipeline.ingest()
    log_path = tmp / "service.log"
    process, url = start_service(pipeline, log_path)
    service = Service(pipeline, url, process, log_path, tenants)
    for name in tenants:
        service.keys[name] = service.new_key(name)
    try:
        yield service
    finally:
        service.process.terminate()
        service.process.wait(timeout=30)
        stop_embedded_postgres(pipeline.home)
        patch.undo()
