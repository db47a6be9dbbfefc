"""A real `dagster-daemon` for the tests that need one (run monitoring, sensors, backfills), and ways to wait."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dagster import DagsterRunStatus, MultiPartitionKey

from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.work.uploads import current_month

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"
BIN = Path(sys.executable).parent
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class Daemons:
    """`dagster-daemon run` processes, each in its own session so that a crash kills its whole tree."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, **env_overrides: str) -> subprocess.Popen:
        prepare_environment()  # sets DAGSTER_HOME, INGEST_DAGSTER_PG_URL ... in os.environ, which the daemon inherits
        with open(self.log_dir / f"daemon-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)], cwd=REPO,
                                       env={**os.environ, **env_overrides}, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def crash(self, process: subprocess.Popen) -> None:
        """SIGKILL the daemon and every process it started: code server, run worker, step processes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            self.crash(process)



def dagster_cli(*args: str) -> subprocess.CompletedProcess:
    """The `dagster` command on this project's workspace and the test's instance."""
    result = subprocess.run([str(BIN / "dagster"), *args, "-w", str(WORKSPACE)], cwd=REPO, env=os.environ.copy(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def stop_upload_sensor() -> None:
    """Stop the upload sensor (running by default) in this instance, so only the test's own runs happen."""
    dagster_cli("sensor", "stop", "upload_sensor")


def wait_for(condition, what: str, daemons: Daemons, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{daemons.logs()}")
        time.sleep(0.5)


def run_status(run_id: str) -> DagsterRunStatus:
    return dagster_instance().get_run_by_id(run_id).status




def launch_partition_run(tenant: str, run_config: dict | None = None) -> str:
    """Submit the ingest job for the tenant's current month as the UI does: a queued run with partition tags and
    the job's default run config, which the launchpad fills in (the in-process executor), unless `run_config`."""
    from ingest_pipeline.defs.jobs import IN_PROCESS_BY_DEFAULT

    run_config = run_config or IN_PROCESS_BY_DEFAULT
    month = current_month()
    tags = {"dagster/partition": str(MultiPartitionKey({"tenant": tenant, "month": month})),
            "dagster/partition/tenant": tenant, "dagster/partition/month": month}
    run_id = str(uuid.uuid4())
    result = subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", "ingest_job",
                             "--tags", json.dumps(tags), "--run-id", run_id,
                             "--config-json", json.dumps(run_config)],
                            cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_id


def execute_partition_run(tenant: str, run_config: dict, folder: Path) -> str:
    """Execute the ingest job for the tenant's current month with `dagster job execute` (the run in that command's
    process, its steps as `run_config`'s executor starts them), with the partition's tags; returns the run's id."""
    month = current_month()
    tags = {"dagster/partition": str(MultiPartitionKey({"tenant": tenant, "month": month})),
            "dagster/partition/tenant": tenant, "dagster/partition/month": month}
    config = folder / "run-config.json"  # JSON is YAML
    config.write_text(json.dumps(run_config))
    before = {run.run_id for run in dagster_instance().get_runs()}
    result = subprocess.run([str(BIN / "dagster"), "job", "execute", "-m", "ingest_pipeline.definitions",
                             "-j", "ingest_job", "--tags", json.dumps(tags), "-c", str(config)],
                            cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_id,) = {run.run_id for run in dagster_instance().get_runs()} - before
    return run_id
