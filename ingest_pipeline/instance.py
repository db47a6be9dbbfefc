"""The Dagster instance the CLI and the UI share: dagster-postgres on the ledger's PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from ingest_pipeline.environment import Settings, postgres_dsn, sqlalchemy_url
from ingest_pipeline.ledger import Ledger

DAGSTER_YAML = """\
# Written by ingest-pipeline; edit the project's instance.py instead.
storage:
  postgres:
    postgres_url:
      env: INGEST_DAGSTER_PG_URL
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    # One queued run per tenant at a time: a tenant's index has one writer.
    tag_concurrency_limits:
      - key: dagster/partition/tenant
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_retries:
  enabled: true
  max_retries: 2
telemetry:
  enabled: false
"""


def prepare_environment() -> tuple[Settings, Ledger]:
    """Start or join Postgres, migrate the ledger, and point DAGSTER_HOME at the shared instance."""
    settings = Settings.from_env()
    os.environ["INGEST_HOME"] = str(settings.home)
    dsn = postgres_dsn(settings.pg_dsn, settings.home)
    dagster_url = sqlalchemy_url(dsn)
    ledger = Ledger(dsn)
    ledger.migrate()
    dagster_home = settings.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = Path(dagster_home) / "dagster.yaml"
    if not config.exists() or config.read_text() != DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["INGEST_DAGSTER_PG_URL"] = dagster_url
    return settings, ledger


def dagster_instance():
    from dagster import DagsterInstance

    return DagsterInstance.get()
