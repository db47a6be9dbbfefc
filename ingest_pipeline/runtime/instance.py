"""The Dagster instance the CLI and the UI share: dagster-postgres on the ledger's PostgreSQL."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultRunLauncher,
    Field,
    Float,
    RunsFilter,
    StringSource,
)

# Not exported by dagster 1.13 at the top level: the base classes of a run launcher, of the storage classes
# a dagster.yaml names, and the record of their configuration.
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

from ingest_pipeline.stores import locks

if TYPE_CHECKING:
    from dagster import DagsterRun
    from dagster._config.config_schema import UserConfigSchema

    from ingest_pipeline.runtime.settings import Settings
    from ingest_pipeline.stores.ledger import Ledger

# The project root: dagster.yaml and workspace.yaml live beside the package (an editable install or a clone).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# The run tags that name a tenant: the ingest runs of its partitions carry Dagster's partition tag; its
# re-encryption, rebuild and reconcile runs carry TENANT_JOB_TAG (their launcher sets it, or the op does).
TENANT_TAG = "dagster/partition/tenant"
TENANT_JOB_TAG = "ingest/tenant"
# Run config for a run the CLI executes in its own process: the console logger says only warnings and errors.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def prepare_environment() -> tuple[Settings, Ledger]:
    """Start or join Postgres, migrate the ledger, and point Dagster at the project's instance configuration.

    DAGSTER_HOME is the project root, whose dagster.yaml is the one instance configuration the CLI, `make dev`
    and a deployment read. Its storage classes find their locations themselves (a `dagster` command in a fresh
    shell works too); the ones found here are exported so that every process this one starts uses the same:
    Dagster's storage on the ledger's PostgreSQL, its artifacts and compute logs under $INGEST_HOME/dagster.
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
    """Create Dagster's tables once per process (IngestPostgresStorage creates them under a lock)."""
    # Each storage creates its tables when first built; one read of each makes sure it was.
    with DagsterInstance.get() as instance:
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("tenants")
        instance.all_instigator_state()


# ---- the storage classes dagster.yaml names ------------------------------------------------------

def dagster_postgres_url() -> str:
    """The SQLAlchemy URL of Dagster's storage, found the way the resources find the ledger's server.

    INGEST_DAGSTER_PG_URL when set (prepare_environment exports it for the processes it starts), else the
    ledger's server: INGEST_PG_DSN, or in development the embedded server under INGEST_HOME (started or joined).
    """
    from ingest_pipeline.runtime.settings import DEVELOPMENT, ConfigurationError, postgres_dsn, sqlalchemy_url

    url = os.environ.get("INGEST_DAGSTER_PG_URL", "").strip()
    if url:
        return url
    dsn = os.environ.get("INGEST_PG_DSN", "").strip()
    profile = os.environ.get("INGEST_PROFILE", "").strip() or DEVELOPMENT
    if not dsn and profile != DEVELOPMENT:
        raise ConfigurationError(f"INGEST_PG_DSN is not set, and INGEST_PROFILE={profile} requires it in every "
                                 "process that opens the Dagster instance (no embedded server outside development)")
    return sqlalchemy_url(postgres_dsn(dsn, os.environ.get("INGEST_HOME", "").strip() or None))


def _dagster_state_dir(variable: str, folder: str) -> str:
    """A folder of Dagster's local state: `variable` when set, else $INGEST_HOME/dagster/<folder> (created)."""
    from ingest_pipeline.runtime.settings import ingest_home

    path = Path(os.environ.get(variable, "").strip() or ingest_home() / "dagster" / folder)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# URLs whose tables this process has made sure of: later instances skip the lock.
_STORAGE_CREATED: set[str] = set()


class IngestPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres storage on the ledger's server, with no configuration (see dagster_postgres_url).

    The first instance a process builds on a server creates Dagster's tables under an advisory lock: two
    processes starting on a new installation (the webserver and the daemon, two CLI commands) would otherwise
    both create them, and one would fail (`type "asset_keys" already exists`).
    """

    def __init__(self, postgres_url: str, inst_data: ConfigurableClassData | None = None):
        if postgres_url in _STORAGE_CREATED:
            super().__init__(postgres_url, inst_data=inst_data)
            return
        import sqlalchemy

        engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                lock = {"classid": locks.DAGSTER_STORAGE.classid, "key": locks.DAGSTER_STORAGE.key}
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:classid, :key)"), lock)
                try:
                    super().__init__(postgres_url, inst_data=inst_data)
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:classid, :key)"), lock)
        finally:
            engine.dispose()
        _STORAGE_CREATED.add(postgres_url)

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: dict) -> IngestPostgresStorage:
        return cls(dagster_postgres_url(), inst_data=inst_data)


class IngestArtifactStorage(LocalArtifactStorage):
    """Dagster's local artifacts in `base_dir`, else INGEST_DAGSTER_STORAGE_DIR, else $INGEST_HOME/dagster/storage."""

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: dict) -> IngestArtifactStorage:
        base_dir = config_value.get("base_dir") or _dagster_state_dir("INGEST_DAGSTER_STORAGE_DIR", "storage")
        return cls(base_dir, inst_data=inst_data)


class IngestComputeLogManager(LocalComputeLogManager):
    """Steps' stdout and stderr in `base_dir`, else INGEST_DAGSTER_LOGS_DIR, else $INGEST_HOME/dagster/logs."""

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"base_dir": Field(StringSource, is_required=False), "polling_timeout": Field(Float, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: dict
                          ) -> IngestComputeLogManager:
        base_dir = config_value.get("base_dir") or _dagster_state_dir("INGEST_DAGSTER_LOGS_DIR", "logs")
        return cls(base_dir, polling_timeout=config_value.get("polling_timeout"), inst_data=inst_data)


def dagster_instance():
    return DagsterInstance.get()


# ---- a tenant's history in Dagster -----------------------------------------------------------------

# Runs that may still write events: deleted only once they ended.
RUNS_UNDER_WAY = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                  DagsterRunStatus.CANCELING]


class InstanceHistory:
    """A tenant's history on a Dagster instance: its runs (by TENANT_TAG or TENANT_JOB_TAG), their event and
    compute logs, and its dynamic partition. What an erasure deletes (work/erasure.py's DagsterHistory)."""

    def __init__(self, instance: DagsterInstance, partitions_name: str = "tenants"):
        self.instance = instance
        self.partitions_name = partitions_name

    def _tenant_runs(self, tenant_id: str, statuses=None) -> list:
        return [record for tag in (TENANT_TAG, TENANT_JOB_TAG)
                for record in self.instance.get_run_records(filters=RunsFilter(tags={tag: tenant_id},
                                                                               statuses=statuses))]

    def wait_for_runs(self, tenant_id: str, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, until none of the tenant's runs is under way (a dead one never ends)."""
        deadline = time.monotonic() + timeout_s
        while self._tenant_runs(tenant_id, RUNS_UNDER_WAY) and time.monotonic() < deadline:
            time.sleep(0.5)

    def delete(self, tenant_id: str, under_way: bool) -> int:
        """Delete the tenant's runs (with their event logs and compute logs) and its dynamic partition; the number
        of runs deleted. Queued runs go (they never start); runs under way only with `under_way`."""
        runs = self._tenant_runs(tenant_id)
        if not under_way:
            runs = [record for record in runs if record.dagster_run.status not in RUNS_UNDER_WAY]
        for record in runs:
            run_id = record.dagster_run.run_id
            # A compute log manager without per-run deletion keeps its files; the run goes anyway.
            with contextlib.suppress(Exception):
                self.instance.compute_log_manager.delete_logs(prefix=[run_id])
            self.instance.delete_run(run_id)
        if self.instance.has_dynamic_partition(self.partitions_name, tenant_id):
            self.instance.delete_dynamic_partition(self.partitions_name, tenant_id)
        return len(runs)


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
