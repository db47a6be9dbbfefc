"""Helpers shared by the integration tests."""


from dagster import DagsterEventType, MultiPartitionKey

from ingest_pipeline.definitions import build_definitions
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.work.uploads import current_month


def materialize_partition(tenant: str, run_config: dict | None = None):
    """Run the ingest job for the tenant's current-month partition directly, as a backfill would."""
    prepare_environment()
    job = build_definitions().resolve_job_def("ingest_job")
    key = MultiPartitionKey({"tenant": tenant, "month": current_month()})
    return job.execute_in_process(partition_key=key, instance=dagster_instance(), raise_on_error=False,
                                  run_config=run_config)


def materialization_metadata(result, asset_name: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[-1] == asset_name:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"no materialization of {asset_name}")


def step_events(run_id: str, event_type: DagsterEventType, step_key: str) -> list:
    records = dagster_instance().all_logs(run_id, of_type=event_type)
    return [r for r in records if r.step_key == step_key]


def ledger_chunks(ledger, tenant: str) -> dict[str, dict]:
    with ledger.connect() as conn:
        rows = conn.execute(
            "SELECT chunk_id::text AS chunk_id, doc_id::text AS doc_id, sequence, state, text_mac, text_ciphertext,"
            " embedding_ciphertext, key_version, seal_format FROM ingest.chunks WHERE tenant_id = %s",
            (tenant,),
        ).fetchall()
    return {row["chunk_id"]: row for row in rows}
