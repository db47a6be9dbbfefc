"""`ingest-pipeline reconcile`: compare each tenant's ledger with its CyborgDB index and repair the drift.

A thin client of `reconcile_job`: it runs the job on the shared Dagster instance (so the run, its report
table and its logs are in the UI) and prints the report the job recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape

from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import (
    QUIET_LOGGERS,
    TENANT_JOB_TAG,
    dagster_instance,
    monitored_run_tags,
    prepare_environment,
)

out = Console()


def _report_and_error(result) -> tuple[list[dict], str | None]:
    """The report rows the step recorded (as output metadata, or on its failure) and why the run failed."""
    from ingest_pipeline.defs.reconciliation import REPORT_METADATA_KEY

    records, error = [], None
    for event in result.all_events:
        metadata = None
        if event.is_successful_output:
            metadata = event.step_output_data.metadata
        elif event.is_step_failure:
            failure, described = event.step_failure_data, event.step_failure_data.user_failure_data
            error = described.description if described and described.description else failure.error.message.strip()
            metadata = described.metadata if described else None
        elif event.event_type_value == "RESOURCE_INIT_FAILURE":
            cause = event.event_specific_data.error
            while cause.cause is not None:
                cause = cause.cause
            error = cause.message.strip()
        if metadata and REPORT_METADATA_KEY in metadata:
            records = [dict(record.data) for record in metadata[REPORT_METADATA_KEY].value.records]
    return records, error


def reconcile(tenant: str | None = None, repair: bool = True, allow_mass_delete: bool = False) -> dict:
    """Run `reconcile_job` for one tenant (or every tenant with a ledger row) and return its report.

    {"run_id", "success", "dry_run", "error", "tenants": {tenant: {figures}}, "totals": {figure: sum}}
    """
    from ingest_pipeline.definitions import build_resources
    from ingest_pipeline.defs.reconciliation import reconcile_job
    from ingest_pipeline.work.reconciliation import REPORT_COLUMNS, report_totals

    config = {"tenants": [validate_tenant(tenant)] if tenant else [], "repair": repair,
              "allow_mass_delete": allow_mass_delete}
    prepare_environment()
    result = reconcile_job.execute_in_process(
        run_config={"ops": {"reconcile_tenants": {"config": config}}, **QUIET_LOGGERS},
        instance=dagster_instance(), resources=build_resources(), raise_on_error=False,
        tags={**monitored_run_tags(), **({TENANT_JOB_TAG: config["tenants"][0]} if tenant else {})},
    )
    records, error = _report_and_error(result)
    totals = report_totals(pd.DataFrame.from_records(records, columns=list(REPORT_COLUMNS)))
    return {
        "run_id": result.run_id,
        "success": result.success,
        "dry_run": not repair,
        "error": error,
        "tenants": {record.pop("tenant_id"): record for record in records},
        "totals": totals,
    }


def write_csv(report: dict, path: str | Path) -> None:
    """The report as CSV, one row per tenant, every column of the report in its order."""
    from ingest_pipeline.work.reconciliation import REPORT_COLUMNS

    rows = [{"tenant_id": tenant, **figures} for tenant, figures in report["tenants"].items()]
    pd.DataFrame.from_records(rows, columns=list(REPORT_COLUMNS)).to_csv(path, index=False)


def _tenant_line(tenant: str, row: dict) -> str:
    if row["error"]:
        return f"[red]{tenant}: not reconciled[/red]: {escape(row['error'])}"
    found = [(row["missing"], "missing"), (row["orphans"], "orphan vectors"),
             (row["unfinished_rows"], "unfinished rows"), (row["stale_rows"], "stale rows"),
             (row["rebuild_missing"], "missing in the rebuild"),
             (row["rebuild_orphans"], "orphan vectors in the rebuild")]
    done = [(row["repaired_missing"], "re-upserted from the cold copy"), (row["removed_orphans"], "orphans deleted"),
            (row["finished_rows"], "rows finished"), (row["removed_stale_rows"], "stale rows removed")]
    drift = ", ".join(f"{n} {what}" for n, what in found if n)
    line = f"[bold]{tenant}[/bold]: " + (drift or "in line with the ledger")
    if any(n for n, _ in done):
        line += " -> " + ", ".join(f"{n} {what}" for n, what in done if n)
    line += f"; index {row['index_vectors_after']} vectors"
    if row["pending_rows"]:
        line += f", {row['pending_rows']} chunks await embedding (ingest)"
    return line + (f" ({escape(row['note'])})" if row["note"] else "")


def print_report(report: dict) -> None:
    mode = "dry run, nothing repaired" if report["dry_run"] else "repaired"
    for tenant, row in report["tenants"].items():
        out.print(_tenant_line(tenant, row))
    totals = report["totals"]
    out.print(f"{totals['tenants_reconciled']} tenant(s), {totals['tenants_with_drift']} with drift ({mode}); "
              f"run {report['run_id']} (details in the Dagster UI: make dev)")
    if not report["success"]:
        out.print(f"[red]reconcile failed[/red]: {escape(report['error'] or 'see the run in the Dagster UI')}")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reconcile", help="compare each tenant's ledger with its CyborgDB index and repair drift from the cold copy"
    )
    parser.add_argument("--tenant", help="only this tenant (default: every tenant with a ledger row)")
    parser.add_argument("--dry-run", action="store_true", help="report the drift, repair nothing")
    parser.add_argument("--allow-mass-delete", action="store_true",
                        help="delete orphan vectors even when they are most of an index")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--csv", metavar="FILE", help="also write the report as CSV, one row per tenant")


def run(args: argparse.Namespace) -> int:
    report = reconcile(args.tenant, repair=not args.dry_run, allow_mass_delete=args.allow_mass_delete)
    if args.csv:
        write_csv(report, args.csv)
    print(json.dumps(report)) if args.json else print_report(report)
    return 0 if report["success"] else 1
