"""Backfills of the ingest job over a month range and a tenant set, launched with the `dagster` CLI and run by
the daemon, as from the UI's Materialize -> Launch backfill."""

from dagster import DagsterRunStatus, RunsFilter

from ingest_pipeline.defs.partitions import month_partitions
from ingest_pipeline.runtime.instance import dagster_instance
from ingest_pipeline_tests.daemons import FINISHED, dagster_cli, wait_for


def test_a_backfill_of_an_unchanged_corpus_makes_no_embedding_call(embedded_pipeline, docs, daemons):
    pipeline = embedded_pipeline
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
    pipeline.upload(globex, docs / "shared-mime-info-spec.pdf")
    summary = pipeline.ingest()
    current = summary["runs"][0]["month"]
    ledger = pipeline.ledger()
    embedded = {t: ledger.tenants.status(t).embeddings_computed for t in (acme, globex)}
    statuses = {t: pipeline.status(t) for t in (acme, globex)}

    # Two tenants over two months (the earlier one has no uploads): four runs, one per partition.
    months = month_partitions.get_partition_keys()
    earlier = months[months.index(current) - 1]
    keys = [f"{month}|{tenant}" for tenant in (acme, globex) for month in (earlier, current)]
    # The upload sensor stays on, as in `make dev`: every upload is ingested, so it requests no run.
    instance = dagster_instance()
    before = {backfill.backfill_id for backfill in instance.get_backfills()}
    dagster_cli("job", "backfill", "-j", "ingest_job", "--partitions", ",".join(keys), "--noprompt")
    (backfill,) = [b for b in instance.get_backfills() if b.backfill_id not in before]
    daemons.start()

    def finished():  # a run of the backfill for every partition, each finished
        # (The backfill's own status turns COMPLETED only at the backfill daemon's next tick, up to 30 s later.)
        runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        return len(runs) == len(keys) and all(run.status in FINISHED for run in runs) and runs

    runs = wait_for(finished, "the backfill's runs to finish", daemons, 300)
    assert sorted(run.tags["dagster/partition"] for run in runs) == sorted(keys)
    assert {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
    assert not instance.get_runs(filters=RunsFilter(tags={"dagster/sensor_name": "upload_sensor"}))
    # Content hashes matched: nothing was re-chunked, re-embedded or re-indexed.
    assert {t: ledger.tenants.status(t).embeddings_computed for t in (acme, globex)} == embedded
    assert {t: pipeline.status(t) for t in (acme, globex)} == statuses
    for run in runs:
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event and event.is_step_materialization and event.step_key == "chunk_embeddings":
                assert event.event_specific_data.materialization.metadata["chunks_embedded"].value == 0
