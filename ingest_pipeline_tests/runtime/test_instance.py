"""Run monitoring and run retries, against a real dagster-daemon on the shared instance.

Runs are submitted the way the UI submits them (`dagster job launch` with the partition's tags, through
the QueuedRunCoordinator), and the daemon launches them in a code server of its own.

- A crash of the daemon's whole process tree (daemon, code server, run worker and step process, as in a
  kill -9 of `dagster dev`, an OOM kill or a reboot) leaves a run STARTED with nobody watching it. The
  restarted daemon's run monitoring must find its worker dead and fail the run, and run retries must
  retry it to success: otherwise the run holds the tenant's only queue slot forever.
- A run that fails fast (Failure(allow_retries=False): a wrong master key) must not be retried: the instance marks
  it so when the failure is stored, with no daemon needed to see it.
- With only the daemon running, the upload sensor (on by default) turns a file dropped into the landing zone
  into a run, and the document becomes searchable.
"""

import os
import shutil
import subprocess
import sys
import time

from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

from ingest_pipeline.core.crypto import generate_master_key
from ingest_pipeline.runtime.instance import dagster_instance
from ingest_pipeline_tests.daemons import (
    FINISHED,
    launch_partition_run,
    run_status,
    stop_upload_sensor,
    wait_for,
)
from ingest_pipeline_tests.helpers import materialize_partition


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


def test_a_dropped_file_becomes_searchable_and_a_run_whose_processes_were_killed_is_failed_and_retried(
    embedded_pipeline, docs, daemons
):
    """Two things only the daemon does, on one daemon and installation.

    What `make dev` gives a user: the daemon (with the upload sensor on by default) turns a file dropped into the
    landing zone into a run, and the document is searchable without anyone pressing a button. Then a crash of the
    daemon's whole process tree mid-run: the restarted daemon's run monitoring fails the run and run retries
    retry it to success."""
    initech, acme = embedded_pipeline.tenant("initech"), embedded_pipeline.tenant("acme")
    daemon = daemons.start()
    started = time.monotonic()
    target = embedded_pipeline.home / "landing" / initech / "spec.pdf"
    target.parent.mkdir(parents=True)
    shutil.copyfile(docs / "shared-mime-info-spec.pdf", target)

    def found() -> bool:
        try:
            hits = embedded_pipeline.search(initech, "What is the default priority of a magic rule?", 1)
        except Exception:  # the tenant's index does not exist yet
            return False
        return bool(hits) and hits[0]["source"] == "spec.pdf"

    wait_for(found, "the dropped file to be searchable", daemons, 240)
    elapsed = time.monotonic() - started
    # Searchable once the index is written; the run then finishes its asset checks.
    runs = dagster_instance().get_runs(filters=RunsFilter(tags={"dagster/partition/tenant": initech}))
    assert len(runs) == 1
    assert wait_for(lambda: run_status(runs[0].run_id) in FINISHED and run_status(runs[0].run_id),
                    "the run to finish", daemons, 120) == DagsterRunStatus.SUCCESS
    assert runs[0].tags.get("dagster/sensor_name") == "upload_sensor"
    status = embedded_pipeline.status(initech)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    print(f"dropped file searchable after {elapsed:.1f} s")

    # A run submitted as the UI does, with the sensor stopped so that only this run happens.
    stop_upload_sensor()
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
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
    # No other run of the tenant: the stopped sensor requested none.
    acme_runs = dagster_instance().get_runs(filters=RunsFilter(tags={"dagster/partition/tenant": acme}))
    assert {run.run_id for run in acme_runs} == {run_id, retry.run_id}


def test_a_run_that_fails_fast_is_not_retried(embedded_pipeline, docs, monkeypatch):
    """A Failure(allow_retries=False) (here: a run that holds another master key) is retried neither by the step's
    RetryPolicy nor as a run: the instance tags the failed run `dagster/will_retry=false` when it stores the failure,
    and that tag is what the run-retry daemon acts on (the test above shows the daemon retrying a crashed run)."""
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    embedded_pipeline.ingest()  # the tenant's data is written under the right master key

    embedded_pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    monkeypatch.setenv("INGEST_MASTER_KEY", generate_master_key())  # this run holds another master key
    result = materialize_partition(acme)
    assert not result.success
    instance = dagster_instance()
    assert instance.run_retries_enabled  # dagster.yaml's run_retries, as the daemon reads them
    failures = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert [record.step_key for record in failures] == ["raw_documents"]
    assert "written under another master key" in failures[0].dagster_event.step_failure_data.error.message
    assert instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY) == []
    assert instance.get_run_by_id(result.run_id).tags.get("dagster/will_retry") == "false"


def test_a_cli_ingest_killed_mid_run_is_seen_dead_by_run_monitoring(embedded_pipeline, docs):
    """`ingest-pipeline ingest` runs in its own process; if that process is killed, run monitoring must be
    able to fail its run, or the run would hold the tenant's queue slot for good."""
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    process = subprocess.Popen([sys.executable, "-m", "ingest_pipeline.cli", "ingest", "--json"],
                               env={**os.environ, **embedded_pipeline.env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    instance = dagster_instance()

    def started_run():
        runs = instance.get_runs(filters=RunsFilter(tags={"dagster/partition/tenant": acme}))
        return runs and step_started(runs[0].run_id, "chunk_embeddings") and runs[0]

    deadline = time.monotonic() + 120
    while not (run := started_run()):
        assert time.monotonic() < deadline and process.poll() is None, "the CLI's run did not start"
        time.sleep(0.3)
    launcher = instance.run_launcher
    assert launcher.check_run_worker_health(run).status.value == "RUNNING"
    process.kill()
    process.wait(timeout=30)
    assert run_status(run.run_id) == DagsterRunStatus.STARTED
    health = launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
    assert health.status.value == "FAILED" and f"process {process.pid} is gone" in health.msg
