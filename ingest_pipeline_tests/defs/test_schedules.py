"""The schedules, evaluated against the real ledger and Dagster instance."""

from datetime import UTC, datetime

from dagster import DagsterRunStatus, RunRequest, SkipReason, build_schedule_context

from ingest_pipeline.core.ids import document_id
from ingest_pipeline.definitions import build_definitions, build_resources
from ingest_pipeline.defs.schedules import pending_work_schedule, weekly_reconciliation_schedule
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.stores.ledger import Document
from ingest_pipeline.work.uploads import current_month
from ingest_pipeline_tests.helpers import materialize_partition


def evaluate(schedule, when: datetime):
    with build_schedule_context(instance=dagster_instance(), scheduled_execution_time=when,
                                resources=build_resources()) as context:
        return schedule(context)


def test_the_nightly_schedule_requests_recent_partitions_with_pending_work_only(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    now = datetime.now(UTC)
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.upload(globex, docs / "pip-dependency-resolution.md")
    _, ledger = prepare_environment()
    with ledger.connect() as conn, conn.transaction():  # a late arrival long ago: outside the nightly window
        ledger.uploads.record(conn, tenant_id=acme, doc_id=document_id(acme, "old.md"), doc_name="old.md",
                             content_sha256="0" * 64, size_bytes=1, is_delete=False, partition_month="2026-01-01")

    requests = evaluate(pending_work_schedule, now)
    month = current_month(now)
    assert sorted(r.partition_key.keys_by_dimension["tenant"] for r in requests) == sorted([acme, globex])
    assert {r.partition_key.keys_by_dimension["month"] for r in requests} == {month}
    assert all(r.run_key.endswith(f"|nightly|{now:%Y-%m-%d}") for r in requests)

    # A tenant with a run in progress is held back, and the skip says so.
    job = build_definitions().resolve_job_def("ingest_job")
    running = dagster_instance().create_run_for_job(job_def=job, tags={"dagster/partition/tenant": acme},
                                                    status=DagsterRunStatus.STARTED)
    held = evaluate(pending_work_schedule, now)
    assert [r.partition_key.keys_by_dimension["tenant"] for r in held] == [globex]
    dagster_instance().delete_run(running.run_id)

    # Once ingested, nothing recent is pending: the tick is skipped with its reason.
    assert materialize_partition(acme).success and materialize_partition(globex).success
    skipped = evaluate(pending_work_schedule, now)
    assert isinstance(skipped, SkipReason) and skipped.skip_message.startswith("no pending work in")

    # A document quarantined under a smaller time limit than today's is due another try.
    with ledger.connect() as conn, conn.transaction():
        row = conn.execute("SELECT * FROM ingest.documents WHERE tenant_id = %s", (globex,)).fetchone()
        document = Document(**row)
        ledger.quarantine.add(conn, document, document.content_sha256, "ran out of time", "time-limit",
                              {"timeout_s": 0.01})
    requests = evaluate(pending_work_schedule, now)
    assert [r.partition_key.keys_by_dimension["tenant"] for r in requests] == [globex]


def test_the_weekly_schedule_runs_the_reconciliation_once_per_week(embedded_pipeline):
    prepare_environment()
    sunday = datetime(2026, 11, 29, 3, tzinfo=UTC)
    request = evaluate(weekly_reconciliation_schedule, sunday)
    assert isinstance(request, RunRequest) and request.run_key == "reconcile|2026-11-29"
    assert weekly_reconciliation_schedule.job_name == "reconcile_job"
    assert weekly_reconciliation_schedule.cron_schedule == "0 3 * * 0"
