"""Jobs: the partitioned ingest job, and a rebuild of a tenant's index from the cold copy."""

from dagster import AssetSelection, Config, OpExecutionContext, define_asset_job, job, op

from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.defs.assets import GROUP, STORAGE_RETRY, tenant_session
from ingest_pipeline.defs.resources import CyborgDB, PostgresLedger, TenantKeyring
from ingest_pipeline.indexing import IndexWriter

ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.groups(GROUP),
    description="Raw documents to chunks, embeddings and the tenant's encrypted index, for one partition.",
)


class RebuildConfig(Config):
    tenant: str
    upsert_batch_size: int = 32


@op(retry_policy=STORAGE_RETRY)
def rebuild_index_from_cold_copy(
    context: OpExecutionContext, config: RebuildConfig, ledger: PostgresLedger, cyborgdb: CyborgDB,
    keyring: TenantKeyring,
) -> None:
    """Drop the tenant's CyborgDB index and refill it from the encrypted embeddings in Postgres."""
    tenant = validate_tenant(config.tenant)
    store = ledger.ledger
    with tenant_session(store, keyring, tenant) as conn:
        writer = IndexWriter(store, cyborgdb.indexes, keyring, tenant, config.upsert_batch_size)
        restored = writer.rebuild(conn)
        count = writer.count()
    context.log.info(f"rebuilt index of tenant {tenant}: {restored} chunks restored, {count} vectors")


@job(description="Rebuild one tenant's CyborgDB index from the Postgres cold copy, without re-embedding.")
def rebuild_tenant_index():
    rebuild_index_from_cold_copy()
