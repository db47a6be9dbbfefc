"""Helpers shared by the integration tests: the sample corpus, test installations, runs and their events."""

import contextlib
import io
import os
import socket
import subprocess
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterEventType, MultiPartitionKey

import ingest_pipeline
from ingest_pipeline import cli
from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.definitions import build_definitions
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.work.uploads import current_month

CORPUS = Path(ingest_pipeline.__file__).parent / "sample_corpus"
ENV_VARS = ("INGEST_HOME", "INGEST_PG_DSN", "INGEST_CYBORGDB_URL", "INGEST_CYBORGDB_API_KEY", "INGEST_MASTER_KEY",
            "DAGSTER_HOME")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        return prepare_environment()[1]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`ingest-pipeline ARGS` in this process: its exit code, stdout and stderr (an uncaught exception's
        traceback on stderr, exit code 1, as the interpreter would print it). The CLI's own code path, without a
        new interpreter importing torch and loading the model; `run_cli` starts a process, for what only a fresh
        process shows."""
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse's refusals
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
        result = subprocess.CompletedProcess(["ingest-pipeline", *args], code, stdout.getvalue(), stderr.getvalue())
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

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


def new_installation(tmp_path, monkeypatch, backend: str, service: dict | None) -> Pipeline:
    """A new installation under `tmp_path/home` with its own master key, on `backend` (the service's url and
    api_key for "service"), set in the environment through `monkeypatch` and recorded in INSTALLATIONS."""
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


def materialize_partition(tenant: str, run_config: dict | None = None):
    """Run the ingest job for the tenant's current-month partition directly, as a backfill would."""
    prepare_environment()
    job = build_definitions().resolve_job_def("ingest_job")
    key = MultiPartitionKey({"tenant": tenant, "month": current_month()})
    return job.execute_in_process(partition_key=key, instance=dagster_instance(), raise_on_error=False,
                                  run_config=run_config)


def materialization_metadata(result, asset_name: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[-1] == asset_name:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"no materialization of {asset_name}")


def step_events(run_id: str, event_type: DagsterEventType, step_key: str) -> list:
    records = dagster_instance().all_logs(run_id, of_type=event_type)
    return [r for r in records if r.step_key == step_key]


def ledger_chunks(ledger, tenant: str) -> dict[str, dict]:
    with ledger.connect() as conn:
        rows = conn.execute(
            "SELECT chunk_id::text AS chunk_id, doc_id::text AS doc_id, sequence, state, text_mac, text_ciphertext,"
            " embedding_ciphertext, citation_ciphertext, key_version, seal_format FROM ingest.chunks"
            " WHERE tenant_id = %s",
            (tenant,),
        ).fetchall()
    return {row["chunk_id"]: row for row in rows}
