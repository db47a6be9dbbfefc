"""The upload sensor, ticked against the real ledger, landing zone and Dagster instance."""

import os
import shutil
import threading
import time

from dagster import DagsterRunStatus, MultiPartitionKey, RunsFilter, SensorResult, SkipReason, build_sensor_context

from ingest_pipeline.core.ids import document_id
from ingest_pipeline.definitions import build_definitions, build_resources
from ingest_pipeline.defs import sensors
from ingest_pipeline.defs.sensors import UPLOADS_PER_TICK, UploadCursor, upload_sensor
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.work.uploads import current_month


def tick(cursor: str | None = None) -> SensorResult | SkipReason:
    with build_sensor_context(instance=dagster_instance(), cursor=cursor, resources=build_resources()) as context:
        result = upload_sensor(context)
        if isinstance(result, SkipReason):
            result.cursor = context.cursor  # a skipped tick still moves the cursor
    return result


def launch(result: SensorResult) -> list[str]:
    """Run what the tick requested as the sensor daemon does: a request whose run key already has a run of this
    sensor is dropped. Returns the run keys that became runs."""
    instance = dagster_instance()
    job = build_definitions().resolve_job_def("ingest_job")
    launched = []
    for request in result.run_requests:
        tags = {"dagster/run_key": request.run_key, "dagster/sensor_name": upload_sensor.name}
        if instance.get_runs(RunsFilter(tags=tags)):
            continue
        keys = request.partition_key.keys_by_dimension
        run = job.execute_in_process(partition_key=MultiPartitionKey(keys), instance=instance, tags=tags)
        assert run.success
        launched.append(request.run_key)
    return launched


def partitions(result: SensorResult) -> list[tuple[str, str]]:
    return [(r.partition_key.keys_by_dimension["tenant"], r.partition_key.keys_by_dimension["month"])
            for r in result.run_requests]


def test_each_upload_triggers_once_and_a_repeated_tick_is_harmless(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
    first = tick()
    month = current_month()
    assert partitions(first) == [(acme, month)]
    assert UploadCursor.parse(first.cursor).upload_id > 0

    # The same tick again (a daemon restarted before it saved its cursor): the same run key, so no new run.
    again = tick(None)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    # The next tick, with the saved cursor: nothing new.
    skipped = tick(first.cursor)
    assert isinstance(skipped, SkipReason) and "no new uploads" in skipped.skip_message
    # Once ingested, the same events replayed from no cursor (a daemon started after CLI ingests) ask for no run.
    assert launch(first) == [first.run_requests[0].run_key]
    replayed = tick(None)
    assert isinstance(replayed, SkipReason), replayed
    assert "2 upload event(s) already ingested" in replayed.skip_message

    # A new upload of one tenant, and a first one by a tenant Dagster has not seen: exactly those partitions.
    (docs / "apache-license-2.0.txt").write_text("Licensed under the Apache License, Version 2.0, amended.\n")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    _, ledger = prepare_environment()
    with ledger.connect() as conn, conn.transaction():  # recorded by another system: no partition added yet
        ledger.uploads.record(conn, tenant_id=globex, doc_id=document_id(globex, "x.md"), doc_name="x.md",
                             content_sha256="0" * 64, size_bytes=1, is_delete=False, partition_month=month)
    second = tick(first.cursor)
    assert sorted(partitions(second)) == sorted([(acme, month), (globex, month)])
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert [request.partition_keys for request in second.dynamic_partitions_requests] == [[globex]]


def test_files_dropped_into_or_removed_from_the_landing_zone_become_runs(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme, initech = pipeline.tenant("acme"), pipeline.tenant("initech")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
    pipeline.ingest()
    cursor = tick().cursor
    landing = pipeline.home / "landing"

    # Another system writes straight into the landing zone, for an existing tenant and a new one.
    (landing / initech / "notes").mkdir(parents=True)
    shutil.copyfile(docs / "shared-mime-info-spec.pdf", landing / initech / "notes" / "spec.pdf")
    shutil.copyfile(docs / "debian-users-and-groups.html", landing / acme / "users.html")
    dropped = tick(cursor)
    month = current_month()
    assert sorted(partitions(dropped)) == sorted([(acme, month), (initech, month)])
    assert [r.partition_keys for r in dropped.dynamic_partitions_requests] == [[initech]]
    _, ledger = prepare_environment()
    with ledger.connect() as conn:
        assert sorted(ledger.uploads.latest_by_name(conn, initech)) == ["notes/spec.pdf"]
    # Recorded once: the next tick finds nothing new.
    assert isinstance(tick(dropped.cursor), SkipReason)

    # Ingest runs (as the requested runs would), the dropped documents are searchable.
    pipeline.ingest()
    assert pipeline.search(initech, "What is the default priority of a magic rule?", 1)[0]["source"] == (
        "notes/spec.pdf")
    cursor = tick(dropped.cursor).cursor

    # A file removed from the landing zone: its partition is requested, once.
    (landing / acme / "pip-dependency-resolution.md").unlink()
    removed = tick(cursor)
    assert partitions(removed) == [(acme, month)] and "|removed|" in removed.run_requests[0].run_key
    assert [r.run_key for r in tick(removed.cursor).run_requests] == [removed.run_requests[0].run_key]


def test_a_file_removed_put_back_and_removed_again_in_one_month_is_deleted_each_time(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
    result = tick()
    launch(result)
    landing_file = pipeline.home / "landing" / acme / "pip-dependency-resolution.md"
    query = "How does pip resolve dependency conflicts?"
    assert pipeline.search(acme, query, 1)[0]["source"] == landing_file.name

    removals = []
    for step in ("remove", "put back", "remove"):
        if step == "remove":
            landing_file.unlink()
        else:
            shutil.copyfile(docs / landing_file.name, landing_file)
        result = tick(result.cursor)
        if step == "remove":
            removals += [r.run_key for r in result.run_requests if "|removed|" in r.run_key]
        assert launch(result), f"{step}: no run"
        sources = {hit["source"] for hit in pipeline.search(acme, query, 5)}
        assert (landing_file.name in sources) == (step == "put back"), step
    assert len(removals) == len(set(removals)) == 2


def test_a_tenant_with_a_run_in_progress_is_not_requested_twice(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    instance = dagster_instance()
    job = build_definitions().resolve_job_def("ingest_job")
    running = instance.create_run_for_job(job_def=job, tags={"dagster/partition/tenant": acme},
                                         status=DagsterRunStatus.STARTED)
    held = tick()
    assert isinstance(held, SkipReason) and "held back" in held.skip_message
    assert list(UploadCursor.parse(held.cursor).deferred) == [f"{acme}|{current_month()}"]
    # Still busy: still held, the upload is not forgotten.
    assert isinstance(tick(held.cursor), SkipReason)
    instance.delete_run(running.run_id)
    released = tick(held.cursor)
    assert partitions(released) == [(acme, current_month())]
    assert UploadCursor.parse(released.cursor).deferred == {}


def test_an_erased_tenant_gets_no_run_and_no_partition_even_if_held_back_before_its_erasure(embedded_pipeline, docs):
    from ingest_pipeline.cli import keys as cli_keys

    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    instance = dagster_instance()
    running = instance.create_run_for_job(job_def=build_definitions().resolve_job_def("ingest_job"),
                                          tags={"dagster/partition/tenant": acme}, status=DagsterRunStatus.STARTED)
    held = tick()
    assert list(UploadCursor.parse(held.cursor).deferred) == [f"{acme}|{current_month()}"]
    instance.delete_run(running.run_id)
    assert cli_keys.erase(acme)["completed"]
    # Files dropped into its folder again after the erasure are not recorded either.
    folder = pipeline.home / "landing" / acme
    folder.mkdir()
    (folder / "again.md").write_text("# Again\n\nDropped after the erasure.\n")
    after = tick(held.cursor)
    assert isinstance(after, SkipReason) and "was erased" in after.skip_message
    assert UploadCursor.parse(after.cursor).deferred == {}
    assert not instance.has_dynamic_partition("tenants", acme)
    ledger = pipeline.ledger()
    with ledger.connect() as conn:
        assert not ledger.uploads.latest_by_name(conn, acme)


def test_a_burst_of_10000_uploads_across_200_tenants_is_paged_over_small_ticks(embedded_pipeline):
    _, ledger = prepare_environment()
    tenants = [f"burst-{i:03d}" for i in range(200)]
    months = ["2026-09-01", "2026-10-01", current_month()]
    rows = [(tenant, document_id(tenant, f"doc-{n}.md"), f"doc-{n}.md", "0" * 64, 1, False, months[n % 3])
            for n in range(50) for tenant in tenants]
    with ledger.connect() as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO ingest.uploads (tenant_id, doc_id, doc_name, content_sha256, size_bytes,"
                        " is_delete, partition_month) VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    assert len(rows) == 10_000

    cursor, requested, durations, added = None, set(), [], set()
    for _ in range(10):
        started = time.monotonic()
        result = tick(cursor)
        durations.append(time.monotonic() - started)
        cursor = result.cursor
        if isinstance(result, SkipReason):
            break
        requested |= set(partitions(result))
        for request in result.dynamic_partitions_requests:
            added |= set(request.partition_keys)
    # Five pages of 2,000 events and a final tick that finds nothing; every partition with uploads requested.
    assert len(durations) == 10_000 // UPLOADS_PER_TICK + 1
    assert requested == {(tenant, month) for tenant in tenants for month in months}
    assert added == set(tenants)
    assert max(durations) < 30, durations  # the tick timeout is 60 s; these are small ticks
    print(f"burst ticks (s): {[round(d, 2) for d in durations]}")


def test_upload_events_become_visible_in_id_order_so_the_cursor_never_skips_one(embedded_pipeline):
    _, ledger = prepare_environment()
    tenant = embedded_pipeline.tenant("acme")

    def record(conn, name: str) -> int:
        return ledger.uploads.record(conn, tenant_id=tenant, doc_id=document_id(tenant, name), doc_name=name,
                                    content_sha256="0" * 64, size_bytes=1, is_delete=False,
                                    partition_month=current_month())

    later: dict[str, int] = {}
    with ledger.connect() as slow, ledger.connect() as fast:
        with slow.transaction():
            first = record(slow, "slow.md")  # a writer whose transaction stays open
            racer = threading.Thread(target=lambda: later.setdefault("id", record(fast, "fast.md")))
            racer.start()
            racer.join(1.0)
            assert racer.is_alive(), "a second upload committed while an earlier one was still open"
            assert ledger.uploads.after(0, 10) == []  # nothing visible yet, so no cursor can pass `first`
        racer.join(10)
    assert first < later["id"]
    assert [u.upload_id for u in ledger.uploads.after(0, 10)] == [first, later["id"]]


def _age(folder, seconds: float = 3600) -> None:
    """Back-date every file and folder under `folder` (deepest first): written long before the tick."""
    when = time.time_ns() - int(seconds * 1e9)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        os.utime(path, ns=(when, when), follow_symlinks=False)
    os.utime(folder, ns=(when, when))


def test_a_tick_walks_only_the_tenants_whose_folders_changed_and_finds_files_deep_down(embedded_pipeline,
                                                                                      monkeypatch):
    pipeline = embedded_pipeline
    tenants = [pipeline.tenant(name) for name in ("acme", "globex", "initech")]
    landing = pipeline.home / "landing"
    for tenant in tenants:
        (landing / tenant / "a" / "b" / "c").mkdir(parents=True)
        (landing / tenant / "top.txt").write_text(f"{tenant}: a note at the top.\n")
        (landing / tenant / "a" / "b" / "c" / "deep.txt").write_text(f"{tenant}: a note deep down.\n")
        _age(landing / tenant)
    prepare_environment()
    cursor = tick().cursor

    listed: list[str] = []
    scandir = os.scandir

    def spy(path="."):
        listed.append(os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    monkeypatch.setattr(sensors, "VERIFY_TENANTS_PER_TICK", 0)

    def walked() -> set[str]:
        found = {tenant for tenant in tenants for path in listed if path.startswith(str(landing / tenant))}
        listed.clear()
        return found

    # Nothing changed: no tenant folder is listed, no file looked at.
    result = tick(cursor)
    assert isinstance(result, SkipReason) and walked() == set()
    # A file dropped three folders down (only that folder's mtime changes): found, and only its tenant walked.
    acme = tenants[0]
    (landing / acme / "a" / "b" / "c" / "new.txt").write_text("A new note, deep down.\n")
    result = tick(result.cursor)
    assert partitions(result) == [(acme, current_month())] and walked() == {acme}
    _, ledger = prepare_environment()
    with ledger.connect() as conn:
        assert "a/b/c/new.txt" in ledger.uploads.latest_by_name(conn, acme)
    # A new subfolder with a file in it, under another tenant.
    (landing / tenants[1] / "a" / "fresh").mkdir()
    (landing / tenants[1] / "a" / "fresh" / "x.txt").write_text("In a new folder.\n")
    result = tick(result.cursor)
    assert partitions(result) == [(tenants[1], current_month())] and walked() >= {tenants[1]}

    # Each tick also walks a bounded number of unchanged tenants in turn, so every one is verified in time.
    _age(landing / acme)
    _age(landing / tenants[1])
    cursor = tick(tick(result.cursor).cursor).cursor  # settled again
    monkeypatch.setattr(sensors, "VERIFY_TENANTS_PER_TICK", 1)
    listed.clear()
    turns = []
    for _ in range(3):
        result = tick(cursor)
        cursor = result.cursor
        turns.append(walked())
    assert sorted(turn.pop() for turn in turns) == sorted(tenants) and all(not turn for turn in turns)
