"""The re-encryption job: moving a tenant's rows to its new data key after a rotation."""

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.defs.resources import PostgresLedger, TenantKeyring
from ingest_pipeline.defs.shared import STORAGE_RETRY, fail_fast, tag_run_with_tenant
from ingest_pipeline.stores.key_vault import TenantErased, UnknownTenant
from ingest_pipeline.stores.ledger import TenantKeyMismatch
from ingest_pipeline.work.reencryption import DEFAULT_BATCH_SIZE, reencrypt_tenant


class ReencryptConfig(Config):
    tenant: str = Field(description="The tenant whose rows move to its active data key.")
    rotate_first: bool = Field(default=False, description="Rotate to a new data key version before moving rows.")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, description="Rows per transaction.")


@op(retry_policy=STORAGE_RETRY)
def reencrypt_tenant_rows(
    context: OpExecutionContext, config: ReencryptConfig, ledger: PostgresLedger, keyring: TenantKeyring,
) -> None:
    """Re-seal every row of the tenant still under an older data key (or an older seal format) under
    its active key, in batches that each commit on the tenant's lock, then retire the versions no row
    needs. Search keeps working throughout; a retried or re-run job resumes where it stopped."""
    tenant = validate_tenant(config.tenant)
    tag_run_with_tenant(context, tenant)
    store = ledger.ledger
    try:
        if config.rotate_first:
            with store.tenant_writer(tenant) as session:
                # Keyed by the run: a retry of this step reuses the version the first attempt created.
                version = keyring.store.rotate(session.conn, tenant, run_id=context.run_id)
            context.log.info(f"tenant {tenant}: new data is written under key version {version}")
            fault_point("reencrypt:after-rotate")
        report = reencrypt_tenant(
            store, keyring, tenant, config.batch_size,
            on_batch=lambda moved: context.log.info(f"tenant {tenant}: {moved} rows re-encrypted"),
        )
    except (UnknownTenant, TenantErased, TenantKeyMismatch) as exc:
        raise fail_fast(str(exc)) from None
    context.add_output_metadata({
        "active_key_version": report.active_version, "rows_moved": report.rows_moved, "batches": report.batches,
        "retired_versions": str(report.retired_versions), "rows_left": report.rows_left,
    })


@job(description="Move one tenant's rows to its active data key (after `ingest-pipeline rotate-key`), "
                 "resumably, while search keeps working; then retire the old key versions.")
def reencrypt_job():
    reencrypt_tenant_rows()
