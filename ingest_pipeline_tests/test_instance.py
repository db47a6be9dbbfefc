"""Run monitoring and run retries, against a real dagster-daemon on the shared instance.

Runs are submitted the way the UI submits them (`dagster job launch` with the partition's tags, through
the QueuedRunCoordinator), and the daemon launches them in a code server of its own.

- A crash of the daemon's whole process tree (daemon, code server, run worker and step process, as in a
  kill -9 of `dagster dev`, an OOM kill or a reboot) leaves a run STARTED with nobody watching it. The
  restarted daemon's run monitoring must find its worker dead and fail the run, and run retries must
  retry it to success: otherwise the run holds the tenant's only queue slot forever.
- A run that fails fast (Failure(allow_retries=False): a wrong master key) must not be retried.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRunStatus, MultiPartitionKey, RunsFilter

from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.defs.partitions import month_key
from ingest_pipeline.instance import dagster_instance, prepare_environment

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = REPO / "workspace.yaml"
BIN = Path(sys.executable).parent
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class Daemons:
    """`dagster-daemon run` processes, each in its own session so that a crash kills its whole tree."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, **env_overrides: str) -> subprocess.Popen:
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


@pytest.fixture
def daemons(embedded_pipeline, tmp_path):
    prepare_environment()  # writes dagster.yaml and sets DAGSTER_HOME and INGEST_DAGSTER_PG_URL in os.environ
    log_dir = tmp_path / "daemon-logs"
    log_dir.mkdir()
    started = Daemons(log_dir)
    try:
        yield started
    finally:
        started.stop_all()


def launch_partition_run(tenant: str) -> str:
    """Submit the ingest job for the tenant's current month as the UI does: a queued run with partition tags."""
    month = month_key(datetime.now(UTC))
    tags = {"dagster/partition": str(MultiPartitionKey({"tenant": tenant, "month": month})),
            "dagster/partition/tenant": tenant, "dagster/partition/month": month}
    run_id = str(uuid.uuid4())
    result = subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", "ingest_job",
                             "--tags", json.dumps(tags), "--run-id", run_id],
                            cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_id


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


def step_started(run_id: str, step_key: str) -> bool:
    return any(record.step_key == step_key
               for record in dagster_instance().all_logs(run_id, of_type=DagsterEventType.STEP_START))


def run_worker_pid(run_id: str) -> int:
    """The pid the run worker logged when it started ("Started process for run (pid: N).")."""
    for record in dagster_instance().all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        pid = record.dagster_event.engine_event_data.metadata.get("pid")
        if pid is not None and record.step_key is None:
            return int(pid.value)
    raise AssertionError(f"run {run_id} logged no worker pid")


def retries_of(run_id: str) -> list:
    return dagster_instance().get_runs(filters=RunsFilter(tags={"dagster/parent_run_id": run_id}))


def engine_messages(run_id: str) -> list[str]:
    return [record.dagster_event.message or ""
            for record in dagster_instance().all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)]


def test_a_run_whose_processes_were_killed_is_failed_by_run_monitoring_and_retried(
    embedded_pipeline, docs, daemons
):
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    daemon = daemons.start()
    run_id = launch_partition_run(acme)

    # Mid-run: the embedding step has started (the model loads and embeds for several seconds).
    wait_for(lambda: step_started(run_id, "chunk_embeddings"), "the embedding step to start", daemons, 120)
    worker = run_worker_pid(run_id)
    assert os.getpgid(worker) == daemon.pid  # the run worker is in the daemon's process tree
    daemons.crash(daemon)
    assert run_status(run_id) == DagsterRunStatus.STARTED  # nothing is left alive to notice
    assert embedded_pipeline.status(acme)["indexed"] == 0

    daemons.start()
    # Run monitoring finds the worker dead and fails the run, within its poll interval.
    assert wait_for(lambda: run_status(run_id) in FINISHED and run_status(run_id), "the dead run to be failed",
                    daemons, 60) == DagsterRunStatus.FAILURE
    failure = dagster_instance().all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)[-1]
    assert f"run worker process {worker} is gone" in failure.dagster_event.message

    # Run retries re-execute it from the failed step, and the tenant ends fully indexed.
    retry = wait_for(lambda: retries_of(run_id), "a retry run", daemons, 60)[0]
    assert wait_for(lambda: run_status(retry.run_id) in FINISHED and run_status(retry.run_id),
                    "the retry run to finish", daemons, 120) == DagsterRunStatus.SUCCESS
    assert retry.tags["dagster/partition/tenant"] == acme
    status = embedded_pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0


def test_a_run_that_fails_fast_is_not_retried(embedded_pipeline, docs, daemons):
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    embedded_pipeline.ingest()  # the tenant's data is written under the right master key

    # The daemon, and so its run workers, hold another master key.
    embedded_pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    daemons.start(INGEST_MASTER_KEY=generate_master_key())
    run_id = launch_partition_run(acme)
    assert wait_for(lambda: run_status(run_id) in FINISHED and run_status(run_id), "the run to fail",
                    daemons, 120) == DagsterRunStatus.FAILURE
    instance = dagster_instance()
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert [record.step_key for record in failures] == ["raw_documents"]
    assert "written under another master key" in failures[0].dagster_event.step_failure_data.error.message
    assert instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY) == []

    # The retry daemon has seen the failure once it either retried the run or said why not.
    wait_for(lambda: retries_of(run_id) or any(m.startswith("Not retrying run") for m in engine_messages(run_id)),
             "the run-retry daemon to handle the failure", daemons, 60)
    assert retries_of(run_id) == []
    assert instance.get_run_by_id(run_id).tags.get("dagster/will_retry") == "false"
