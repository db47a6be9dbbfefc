"""Jobs: the partitioned ingest job, and a rebuild of a tenant's index from the cold copy."""

from dagster import AssetSelection, Config, OpExecutionContext, define_asset_job, job, op
from pydantic import Field

from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.defs.resources import CyborgDB, PostgresLedger, TenantKeyring
from ingest_pipeline.defs.shared import GROUP, STORAGE_RETRY, tag_run_with_tenant, tenant_session
from ingest_pipeline.work.indexing import IndexWriter

# The four stages form a chain, so one process per run loses no parallelism and saves a process start (and
# imports) per step. A run may still choose the multiprocess executor in its run config (launchpad, RunRequest).
IN_PROCESS_BY_DEFAULT = {"execution": {"config": {"in_process": {}}}}

ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.groups(GROUP),
    description="Raw documents to chunks, embeddings and the tenant's encrypted index, for one partition.",
    config=IN_PROCESS_BY_DEFAULT,
)


class RebuildConfig(Config):
    tenant: str
    upsert_batch_size: int = 32
    lock_segment_s: float = Field(
        default=30.0, ge=0, description="The tenant's lock is let go after this many seconds of filling the new "
        "index, so ingests run in between (they write to both generations); 0: after every batch.")


@op(retry_policy=STORAGE_RETRY)
def rebuild_index_from_cold_copy(
    context: OpExecutionContext, config: RebuildConfig, ledger: PostgresLedger, cyborgdb: CyborgDB,
    keyring: TenantKeyring,
) -> None:
    """Fill a new generation of the tenant's CyborgDB index from the encrypted embeddings in Postgres,
    beside the live one, and swap when it is complete. Search keeps answering from the live index
    meanwhile; a retried or re-run rebuild resumes after the last batch it wrote. It holds the tenant's lock in
    segments of `lock_segment_s`, so ingests of the tenant go on in between, and swaps under it."""
    tenant = validate_tenant(config.tenant)
    tag_run_with_tenant(context, tenant)
    store = ledger.ledger
    written, generation, segments = 0, None, 0
    while generation is None:  # in segments under the tenant's lock, ingests in between; swapped under it
        if segments:
            fault_point("rebuild:between-segments")
        with tenant_session(store, keyring, tenant) as session:
            writer = IndexWriter(store, cyborgdb.indexes, keyring, session, config.upsert_batch_size)
            part, generation = writer.rebuild(max_seconds=config.lock_segment_s)
            written, segments = written + part, segments + 1
            if generation is not None:
                count = writer.count()
            writer.close()  # before the lock goes: an ingest in between opens the indexes itself
    context.log.info(f"rebuilt index of tenant {tenant}: generation {generation} is live with {count} vectors "
                     f"({written} written by this attempt)")
    context.add_output_metadata({"generation": generation, "index_vectors": count, "chunks_written": written,
                                 "lock_segments": segments})


@job(description="Rebuild one tenant's CyborgDB index from the Postgres cold copy beside the live one, "
                 "without re-embedding, and swap when complete.")
def rebuild_tenant_index_job():
    rebuild_index_from_cold_copy()
