"""Schedules: a daily sweep of recent partitions with pending work, and the weekly reconciliation."""

from __future__ import annotations

from datetime import UTC, datetime

from dagster import (
    DefaultScheduleStatus,
    MultiPartitionKey,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from ingest_pipeline.defs.jobs import ingest_job
from ingest_pipeline.defs.partitions import MONTH_DIMENSION, TENANT_DIMENSION
from ingest_pipeline.defs.reconciliation import reconcile_job
from ingest_pipeline.defs.resources import LandingZoneResource, PostgresLedger
from ingest_pipeline.defs.sensors import tenants_with_runs_in_progress

# Late arrivals and failed partitions are looked for in the current month and the two before it.
RECENT_MONTHS = 3


def recent_months(now: datetime, count: int = RECENT_MONTHS) -> set[str]:
    year, month, months = now.year, now.month, set()
    for _ in range(count):
        months.add(f"{year:04d}-{month:02d}-01")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


@schedule(
    job=ingest_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every night: a run for each partition of the last three months that still has pending work "
    "(late arrivals, partitions whose run failed), unless its tenant already has a run in progress.",
)
def pending_work_schedule(context: ScheduleEvaluationContext, ledger: PostgresLedger, landing: LandingZoneResource):
    """Re-materialize recent partitions of every tenant with pending work, and those with a document quarantined
    under a smaller extraction limit than today's."""
    now = context.scheduled_execution_time or datetime.now(UTC)
    months = recent_months(now)
    pending = [(t, m) for t, m in ledger.ledger.uploads.pending_partitions(limits=landing.current_limits())
               if m in months]
    busy = tenants_with_runs_in_progress(context) if pending else set()
    requests = [
        RunRequest(run_key=f"{tenant}|{month}|nightly|{now:%Y-%m-%d}",
                   partition_key=MultiPartitionKey({TENANT_DIMENSION: tenant, MONTH_DIMENSION: month}))
        for tenant, month in pending if tenant not in busy
    ]
    if not requests:
        held = sorted({t for t, _ in pending if t in busy})
        return SkipReason(f"no pending work in {', '.join(sorted(months))}"
                          + (f"; held back (run in progress): {', '.join(held)}" if held else ""))
    return requests


@schedule(
    job=reconcile_job,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every Sunday: compare every tenant's ledger with its CyborgDB index and repair drift.",
)
def weekly_reconciliation_schedule(context: ScheduleEvaluationContext):
    """Reconcile every tenant's index with its ledger."""
    return RunRequest(run_key=f"reconcile|{context.scheduled_execution_time:%Y-%m-%d}")
