"""The reconciliation job: each tenant's ledger against the ids its CyborgDB index returns, drift repaired."""

import time

import pandas as pd
from dagster import (
    Config,
    Failure,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    TableColumn,
    TableRecord,
    TableSchema,
    job,
    op,
)
from pydantic import Field

from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.core.ids import InvalidName, validate_tenant
from ingest_pipeline.defs.resources import CyborgDB, PostgresLedger, TenantKeyring
from ingest_pipeline.defs.shared import STORAGE_RETRY, TenantWasErased, fail_fast, tag_run_with_tenant, tenant_session
from ingest_pipeline.stores.tenant_index import IndexDimensionMismatch, IndexKeyMismatch
from ingest_pipeline.work.reconciliation import (
    DEFAULT_MAX_ORPHAN_SHARE,
    REPORT_COLUMNS,
    TenantReconciliation,
    reconcile_tenant,
    report_frame,
    report_records,
    report_totals,
)

REPORT_METADATA_KEY = "report"
# A tenant that fails for one of these is reported and the others go on; anything else (a busy tenant, a
# dropped connection, an unavailable CyborgDB) fails the step, and the retry reconciles every tenant again.
TENANT_ERRORS = (Failure, DecryptionError, IndexDimensionMismatch, IndexKeyMismatch)


class ReconcileConfig(Config):
    tenants: list[str] = Field(
        default=[], description="Tenants to reconcile; empty means every tenant with a row in the ledger."
    )
    repair: bool = Field(default=True, description="Repair the drift found; false only reports it (a dry run).")
    allow_mass_delete: bool = Field(
        default=False, description="Delete orphan vectors even when they are more than max_orphan_share of an index."
    )
    max_orphan_share: float = Field(
        default=DEFAULT_MAX_ORPHAN_SHARE,
        description="Largest share of an index's vectors that may be deleted as orphans without allow_mass_delete.",
    )
    upsert_batch_size: int = Field(default=32, description="Chunks read from the cold copy and upserted at a time.")


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    return "string"


def report_metadata(frame: pd.DataFrame, dry_run: bool, duration_s: float) -> dict:
    """The report as a Dagster table (one row per tenant, every column described), with totals as numbers."""
    schema = TableSchema(columns=[
        TableColumn(name, _column_type(frame[name]), description=description)
        for name, description in REPORT_COLUMNS.items()
    ])
    table = MetadataValue.table([TableRecord(record) for record in report_records(frame)], schema=schema)
    return {REPORT_METADATA_KEY: table, **report_totals(frame), "dry_run": dry_run,
            "duration_s": round(duration_s, 3)}


@op(retry_policy=STORAGE_RETRY, out=Out(Nothing))
def reconcile_tenants(
    context: OpExecutionContext, config: ReconcileConfig, ledger: PostgresLedger, cyborgdb: CyborgDB,
    keyring: TenantKeyring,
) -> None:
    """Compare each tenant's ledger with the ids its CyborgDB index returns, and repair the drift.

    As the tenant's one writer: chunks marked indexed but missing from the index are upserted again from the
    encrypted cold copy (no re-embedding; a lost index is recreated and refilled), vectors the ledger does not
    know are deleted, chunks left embedded but unmarked are upserted and marked indexed, and stale chunks leave
    the index and the ledger. A rebuild in progress is reconciled too, up to its cursor. The `report` table has
    one row per tenant: what was found (missing, orphans, unfinished and stale rows) and what was repaired.

    The step fails, after reconciling every other tenant, when a tenant could not be reconciled (a wrong
    master key, an unreadable ciphertext) or when orphans were held back for confirmation. A transient error
    (a busy tenant, an unavailable CyborgDB) retries the step, whose report then shows what was still out of
    line when the retry started; each tenant's figures are also in the step's log.
    """
    store = ledger.ledger
    started = time.perf_counter()
    registered = store.tenants.registered()
    try:
        tenants = [validate_tenant(tenant) for tenant in config.tenants] or registered
    except InvalidName as exc:
        raise fail_fast(str(exc)) from None
    erased = sorted(set(tenants) & store.tenants.erased()) if config.tenants else []
    if erased:
        raise fail_fast(f"tenant(s) {', '.join(erased)} were erased: nothing was reconciled")
    if len(config.tenants) == 1:
        tag_run_with_tenant(context, tenants[0])  # erasing that tenant deletes this run too
    unknown = sorted(set(tenants) - set(registered))
    if unknown:
        raise fail_fast(f"no ledger row for tenant(s) {', '.join(unknown)}: nothing was reconciled")
    results = []
    for tenant in tenants:
        try:
            with tenant_session(store, keyring, tenant) as session:
                result = reconcile_tenant(
                    store, cyborgdb.indexes, keyring, session, config.repair, config.upsert_batch_size,
                    max_orphan_share=config.max_orphan_share, allow_mass_delete=config.allow_mass_delete,
                )
        except TenantWasErased as exc:  # since the tenants were listed: nothing to reconcile, nothing written
            context.log.warning(f"tenant {tenant}: skipped: {exc.description}")
            continue
        except TENANT_ERRORS as exc:
            message = exc.description if isinstance(exc, Failure) else str(exc)
            result = TenantReconciliation(tenant, dry_run=not config.repair, error=message or type(exc).__name__)
            context.log.error(f"tenant {tenant}: not reconciled: {result.error}")
        else:
            context.log.info(
                f"tenant {tenant}: {result.missing} missing, {result.orphans} orphans, {result.unfinished_rows} "
                f"unfinished and {result.stale_rows} stale rows; repaired {result.repaired_missing}, removed "
                f"{result.removed_orphans}, finished {result.finished_rows}"
                + (f" ({result.note})" if result.note else "")
            )
        results.append(result)
    frame = report_frame(results)
    metadata = report_metadata(frame, dry_run=not config.repair, duration_s=time.perf_counter() - started)
    failed = frame.loc[frame["error"] != "", "tenant_id"].tolist()
    held_back = frame.loc[frame["orphans_held_back"] > 0, "tenant_id"].tolist()
    if failed or held_back:
        reasons = ([f"not reconciled: {', '.join(failed)}"] if failed else []) + (
            [f"orphans held back for confirmation (allow_mass_delete): {', '.join(held_back)}"] if held_back else [])
        raise Failure(description="; ".join(reasons) + " (see the report)", metadata=metadata, allow_retries=False)
    context.add_output_metadata(metadata)


@job(
    description="Compare every tenant's ledger with its CyborgDB index and repair drift from the encrypted cold "
    "copy: missing vectors upserted again, orphans deleted, half-done rows finished. Config `tenants` narrows it, "
    "`repair: false` only reports.",
)
def reconcile_job():
    reconcile_tenants()
