"""Launching Dagster runs for the CLI's verbs: the Definitions and resources built for this process, jobs executed
in process on the shared instance (so each run is in the UI), and what a run's events say (its error, its
materializations' figures summed into the ingest summary's totals).

It needs the Definitions, so it sits above `defs/`; what a run does lives in `work/` and `defs/`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingest_pipeline.runtime.instance import QUIET_LOGGERS, TENANT_JOB_TAG, monitored_run_tags

# Run config that keeps a run's console logs to warnings: the CLI prints its own summary.
# The figures of the ingest summary's totals, summed over every run's materializations.
SUMMARY_TOTALS = ["documents_new", "documents_changed", "documents_unchanged", "documents_deleted",
                  "documents_quarantined", "chunks", "tokens", "chunks_embedded", "chunks_upserted", "chunks_removed"]


def definitions():
    """(Definitions, resources), built on each call: the environment decides the backends, and tests change it
    between calls."""
    from ingest_pipeline.definitions import build_definitions, build_resources

    return build_definitions(), build_resources()


def execute_job(job, run_config: dict, instance, *, tenant: str | None = None, resources: dict | None = None,
                **options: Any):
    """Execute `job` in this process on `instance`, its console logs quiet, tagged for run monitoring and (with
    `tenant`) as the tenant's job, so that an erasure finds it; a failed run is returned, never raised."""
    tags = {**monitored_run_tags(), **({TENANT_JOB_TAG: tenant} if tenant else {})}
    return job.execute_in_process(run_config={**QUIET_LOGGERS, **run_config}, instance=instance,
                                  raise_on_error=False, tags=tags, **({"resources": resources} if resources else {}),
                                  **options)


def resource_init_error(event) -> str | None:
    """Why a resource (a setting) could not start, from a RESOURCE_INIT_FAILURE event: its innermost cause."""
    if event.event_type_value != "RESOURCE_INIT_FAILURE":
        return None
    error = event.event_specific_data.error
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def run_error(result) -> str | None:
    """Why a run failed: the first step failure, or the resource (setting) that could not start.
    Messages are already free of document content and secrets."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            message = error.message.strip()
            # "Exceeded max_retries of 3" says nothing of why: the last attempt's error is its cause.
            while error.cause is not None and "max_retries" in message:
                error = error.cause
                message = f"{message}: {error.message.strip()}"
            return message
        failure = resource_init_error(event)
        if failure is not None:
            return failure
    return None


@dataclass
class IngestRuns:
    """The runs of one `ingest`, and their materializations' numeric metadata summed."""

    runs: list[dict] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    stage_seconds: Counter[str] = field(default_factory=Counter)  # by asset, from each run's duration_s

    def add(self, tenant: str, month: str, result) -> None:
        """Count one finished run of the ingest job for the partition (tenant, month)."""
        for event in result.get_asset_materialization_events():
            for name, value in event.materialization.metadata.items():
                if isinstance(value.value, int | float) and not isinstance(value.value, bool):
                    self.totals[name] += value.value
            duration = event.materialization.metadata.get("duration_s")
            if duration is not None:
                self.stage_seconds[event.asset_key.path[-1]] += duration.value
        checks = result.get_asset_check_evaluations()
        self.runs.append({"tenant": tenant, "month": month, "run_id": result.run_id,
                          "success": result.success, "checks_passed": sum(c.passed for c in checks),
                          "checks_failed": sorted(c.check_name for c in checks if not c.passed),
                          "error": None if result.success else run_error(result)})


def ingest_pending(defs, resources: dict, instance, ledger, tenant: str | None, removed: set[tuple[str, str]],
                   allow_mass_delete: bool = False,
                   progress: Callable[[list[str]], contextlib.AbstractContextManager] | None = None) -> dict:
    """Execute the ingest job, one run after another, for every (tenant, month) partition with pending work
    (`tenant`'s only, when given) and for the partitions in `removed` (live documents whose file was removed);
    returns the ingest summary.

    `progress(tenants)` is a display to run under, if any. Documents quarantined under a smaller extraction
    limit than this run's are tried again.
    """
    from dagster import MultiPartitionKey

    from ingest_pipeline.defs.partitions import MONTH_DIMENSION, TENANT_DIMENSION, tenant_partitions

    job = defs.resolve_job_def("ingest_job")
    limits = resources["landing"].current_limits()
    partitions = sorted(set(ledger.uploads.pending_partitions(tenant, limits)) | removed)
    tenants = sorted({t for t, _ in partitions})
    new_tenants = [t for t in tenants if not instance.has_dynamic_partition(tenant_partitions.name, t)]
    if new_tenants:
        instance.add_dynamic_partitions(tenant_partitions.name, new_tenants)
    if partitions:
        # One model per process: start loading it now, so Dagster's start and the chunking overlap the load.
        resources["embedding_model"].preload()
    run_config = {"ops": {"raw_documents": {"config": {"allow_mass_delete": True}}}} if allow_mass_delete else {}
    collected = IngestRuns()
    started = time.perf_counter()
    with progress(tenants) if progress else contextlib.nullcontext():
        for tenant_id, month in partitions:
            key = MultiPartitionKey({TENANT_DIMENSION: tenant_id, MONTH_DIMENSION: month})
            collected.add(tenant_id, month, execute_job(job, run_config, instance, partition_key=key))
    totals, runs = collected.totals, collected.runs
    return {
        "runs": runs,
        "failed_runs": sum(not r["success"] for r in runs),
        "failed_checks": sum(len(r["checks_failed"]) for r in runs),
        "totals": {k: int(totals[k]) for k in SUMMARY_TOTALS},
        "embedding_chunks_per_second": round(totals["chunks_embedded"] / totals["embedding_seconds"], 1)
        if totals["embedding_seconds"] else None,
        "seconds": round(time.perf_counter() - started, 2),
        "stage_seconds": {stage: round(seconds, 2) for stage, seconds in collected.stage_seconds.items()},
        "quarantined": {t: [{"document": q.doc_name, "code": q.reason_code, "reason": q.reason,
                             **({"limits": q.limits} if q.limits else {})}
                            for q in ledger.quarantine.listed(t)] for t in tenants},
    }


def rebuild_index(tenant: str, instance, lock_segment_s: float | None = None):
    """Execute the rebuild job for the tenant's index (from the Postgres cold copy); returns the run's result."""
    defs, _ = definitions()
    job = defs.resolve_job_def("rebuild_tenant_index_job")
    op_config = {"tenant": tenant, **({} if lock_segment_s is None else {"lock_segment_s": lock_segment_s})}
    return execute_job(job, {"ops": {"rebuild_index_from_cold_copy": {"config": op_config}}}, instance, tenant=tenant)
