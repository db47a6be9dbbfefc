"""The Dagster instance the CLI and the UI share: dagster-postgres on the ledger's PostgreSQL."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import DagsterEventType, DefaultRunLauncher

# Not exported by dagster 1.13 at the top level; the base class of every run launcher uses them.
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus

if TYPE_CHECKING:
    from dagster import DagsterRun

    from ingest_pipeline.runtime.settings import Settings
    from ingest_pipeline.stores.ledger import Ledger

# The project root: dagster.yaml and workspace.yaml live beside the package (an editable install or a clone).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def prepare_environment() -> tuple[Settings, Ledger]:
    """Start or join Postgres, migrate the ledger, and point Dagster at the project's instance configuration.

    DAGSTER_HOME is the project root, whose dagster.yaml is the one instance configuration the CLI, `make dev`
    and a deployment read; the locations it takes from the environment are set here: Dagster's storage on
    the ledger's PostgreSQL, its artifacts and compute logs under $INGEST_HOME/dagster.
    """
    from ingest_pipeline.runtime.settings import Settings, postgres_dsn, sqlalchemy_url
    from ingest_pipeline.stores.ledger import Ledger

    settings = Settings.from_env()
    os.environ["INGEST_HOME"] = str(settings.home)
    dsn = postgres_dsn(settings.pg_dsn, settings.home)
    ledger = Ledger(dsn)
    ledger.migrate()
    if not (PROJECT_ROOT / "dagster.yaml").is_file():
        raise FileNotFoundError(f"{PROJECT_ROOT / 'dagster.yaml'} is missing: run from a clone of the project")
    state = settings.dagster_state_dir
    for folder in ("storage", "logs"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "DAGSTER_HOME": str(PROJECT_ROOT),
        "INGEST_DAGSTER_PG_URL": sqlalchemy_url(dsn),
        "INGEST_DAGSTER_STORAGE_DIR": str(state / "storage"),
        "INGEST_DAGSTER_LOGS_DIR": str(state / "logs"),
    })
    _create_dagster_storage(dsn)
    return settings, ledger


@functools.cache
def _create_dagster_storage(dsn: str) -> None:
    """Create Dagster's tables (once per process, under a lock): two processes starting on a new installation
    would otherwise both create them, and one would fail (`type "asset_keys" already exists`)."""
    from dagster import DagsterInstance

    from ingest_pipeline.stores import locks
    from ingest_pipeline.stores.ledger import Ledger

    with Ledger(dsn).connect() as conn:
        conn.execute(*locks.DAGSTER_STORAGE.call("pg_advisory_lock"))
        try:
            # Each storage creates its tables when first built; one read of each makes sure it was.
            with DagsterInstance.get() as instance:
                instance.get_runs(limit=1)
                instance.get_dynamic_partitions("tenants")
                instance.all_instigator_state()
        finally:
            conn.execute(*locks.DAGSTER_STORAGE.call("pg_advisory_unlock"))


def dagster_instance():
    from dagster import DagsterInstance

    return DagsterInstance.get()


# ---- run monitoring -----------------------------------------------------------------------------

# The machine whose code server started the run worker (a hidden tag: its name starts with a dot).
LAUNCH_HOST_TAG = ".ingest/launch_host"
# How much later than its first log line a worker's recorded start may be (clock adjustments, rounding).
START_TIME_TOLERANCE_SECONDS = 60.0


def monitored_run_tags() -> dict[str, str]:
    """Tags for a run executed in this process (the CLI's runs), so that run monitoring can tell when this
    process died under it and fail the run, which otherwise holds its tenant's queue slot."""
    return {LAUNCH_HOST_TAG: socket.gethostname()}


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's DefaultRunLauncher, able to tell run monitoring whether a run's worker is alive.

    The DefaultRunLauncher starts each run in a subprocess of a code server on this machine and has no
    health check: when the worker dies together with the code server that watches it (kill -9 or a crash
    of `dagster dev` or of the daemon, a reboot), run monitoring cannot see it and the run stays STARTED.
    This launcher tags each run with the machine it launched it on; the worker logs its pid when it
    starts ("Started process for run (pid: N)"), and the run is reported FAILED once that process is
    gone. Runs it cannot judge (launched on another machine, or executed in process by the CLI) count
    as running.
    """

    def launch_run(self, context: LaunchRunContext) -> None:
        self._instance.add_run_tags(context.dagster_run.run_id, {LAUNCH_HOST_TAG: socket.gethostname()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if run.tags.get(LAUNCH_HOST_TAG) != socket.gethostname():
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not launched on this machine: not checked")
        worker = self._run_worker(run.run_id)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not logged its pid yet")
        pid, reported_at = worker
        if _process_alive_since(pid, reported_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive",
                                        run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone",
                                    run_worker_id=str(pid))

    def _run_worker(self, run_id: str) -> tuple[int, float] | None:
        """(pid, time it was logged) of the run's worker: the first run-level engine event with a pid."""
        for record in self._instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            data = record.dagster_event.event_specific_data if record.dagster_event else None
            metadata = getattr(data, "metadata", None) or {}
            if record.step_key is None and "pid" in metadata:
                try:
                    return int(metadata["pid"].value), record.timestamp
                except (TypeError, ValueError):
                    return None
        return None


def _process_alive_since(pid: int, reported_at: float) -> bool:
    """Whether process `pid` exists, is not a zombie, and is the process that logged at `reported_at`.

    A process that started after that is another one, given the dead worker's pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        if Path("/proc/self/stat").exists():
            return False
        try:  # no procfs (macOS): existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    fields = stat[stat.rindex(")") + 2:].split()  # the fields after the command name, from field 3 (state)
    if fields[0] in ("Z", "X", "x"):
        return False
    boot_time = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    started = boot_time + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in ticks since boot
    return started <= reported_at + START_TIME_TOLERANCE_SECONDS
