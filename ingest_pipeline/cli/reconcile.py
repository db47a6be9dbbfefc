"""`ingest-pipeline reconcile`: compare each tenant's ledger with its CyborgDB index and repair the drift.

A thin client of `reconcile_job`: it runs the job on the shared Dagster instance (so the run, its report
table and its logs are in the UI) and prints the report the job recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ingest_pipeline.cli import render
from ingest_pipeline.cli.runs import execute_job, resource_init_error
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment


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
            error = resource_init_error(event)
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
    result = execute_job(reconcile_job, {"ops": {"reconcile_tenants": {"config": config}}}, dagster_instance(),
                         tenant=config["tenants"][0] if tenant else None, resources=build_resources())
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
    render.print_json(report) if args.json else render.print_reconcile_report(report)
    return 0 if report["success"] else 1
