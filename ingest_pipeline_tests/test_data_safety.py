"""Data safety: an outage is never read as a deletion, configuration is read where the step runs, the
writer's lock is fenced, a rebuild keeps search online, and rolled-back ciphertexts are refused."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from dagster import DagsterEventType, Failure, MultiPartitionKey, materialize

from ingest_pipeline import cli
from ingest_pipeline.core.embedding import bundled_model_path
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.defs.assets import raw_documents
from ingest_pipeline.runtime.instance import dagster_instance
from ingest_pipeline.stores import locks
from ingest_pipeline.stores.key_vault import KeyVault
from ingest_pipeline.stores.landing_zone import RefusedFile
from ingest_pipeline.stores.ledger import Ledger, TenantBusy, sha256_file
from ingest_pipeline.stores.tenant_index import IndexUnavailable, TenantIndex
from ingest_pipeline.work.indexing import IndexWriter
from ingest_pipeline.work.search import EmbeddingModelMismatch
from ingest_pipeline.work.uploads import current_month
from ingest_pipeline_tests.helpers import (
    ledger_chunks,
    materialization_metadata,
    materialize_partition,
    step_events,
)

MAGIC_QUERY = "What is the default priority of a magic rule?"


def _failure_message(result, step: str) -> str:
    failures = step_events(result.run_id, DagsterEventType.STEP_FAILURE, step)
    assert len(failures) == 1, f"expected one failure of {step}"
    return failures[0].dagster_event.step_failure_data.error.message


def _snapshot(pipeline, tenant: str) -> tuple[dict, int]:
    return pipeline.status(tenant), pipeline.ledger().tenants.status(tenant).embeddings_computed


# ---- 1. the landing zone ---------------------------------------------------------------------------


def test_a_missing_landing_zone_or_tenant_folder_fails_and_deletes_nothing(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    pipeline.ingest()
    before = _snapshot(pipeline, acme)
    assert before[0]["documents"] == 4 and before[0]["indexed"] > 0
    landing, away = pipeline.home / "landing", pipeline.home / "landing-unmounted"

    # The whole landing zone is gone (an unmounted volume): the CLI refuses, saying why.
    landing.rename(away)
    result = pipeline.cli("ingest", check=False)
    assert result.returncode == 1
    assert "landing zone" in result.stderr and "is missing" in result.stderr
    assert "nothing was deleted" in result.stderr
    # A run started from the UI, a sensor or a schedule fails too, at once and without retries.
    run = materialize_partition(acme)
    assert not run.success
    assert "is missing" in _failure_message(run, "raw_documents")
    assert step_events(run.run_id, DagsterEventType.STEP_UP_FOR_RETRY, "raw_documents") == []
    assert _snapshot(pipeline, acme) == before

    # The landing zone is back but the tenant's folder is not; then the folder is not a directory.
    away.rename(landing)
    tenant_folder = landing / acme
    tenant_folder.rename(pipeline.home / "acme-elsewhere")
    assert "is missing" in _failure_message(materialize_partition(acme), "raw_documents")
    tenant_folder.write_text("not a folder")
    result = pipeline.cli("ingest", "--tenant", acme, check=False)
    assert result.returncode == 1 and "is not a directory" in result.stderr
    assert _snapshot(pipeline, acme) == before

    # Everything comes back: nothing to do, nothing re-embedded, nothing lost, search as before.
    tenant_folder.unlink()
    (pipeline.home / "acme-elsewhere").rename(tenant_folder)
    assert pipeline.ingest()["runs"] == []
    assert materialize_partition(acme).success
    assert _snapshot(pipeline, acme) == before
    assert pipeline.search(acme, MAGIC_QUERY, 1)[0]["source"] == "shared-mime-info-spec.pdf"


def test_a_partition_losing_most_of_its_documents_at_once_stops_until_confirmed(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    pipeline.ingest()
    before = _snapshot(pipeline, acme)
    folder = pipeline.home / "landing" / acme
    kept = "apache-license-2.0.txt"
    for path in folder.iterdir():
        if path.name != kept:
            path.unlink()

    summary = cli.ingest(acme, show_progress=False)
    assert summary["failed_runs"] == 1
    error = summary["runs"][0]["error"]
    assert "3 of 4 documents are missing" in error and "--allow-mass-delete" in error
    assert _snapshot(pipeline, acme) == before

    # The user confirms: the three are deleted from Postgres and the index, the fourth stays.
    result = json.loads(pipeline.cli("ingest", "--tenant", acme, "--allow-mass-delete", "--json").stdout)
    assert result["failed_runs"] == 0 and result["totals"]["documents_deleted"] == 3
    status = pipeline.status(acme)
    assert status["documents"] == 1
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert {hit["source"] for hit in pipeline.search(acme, MAGIC_QUERY, 5)} == {kept}

    # A removed file put back (or copied in again) is a new upload: ingested again, never "unchanged".
    shutil.copyfile(docs / "pip-dependency-resolution.md", folder / "pip-dependency-resolution.md")
    assert pipeline.ingest(acme)["totals"]["documents_new"] == 1
    assert pipeline.upload(acme, docs / "shared-mime-info-spec.pdf")["uploaded"] == ["shared-mime-info-spec.pdf"]
    pipeline.ingest()
    status = pipeline.status(acme)
    assert status["documents"] == 3 and status["chunks"] == status["indexed"] == status["index_vectors"]
    assert pipeline.search(acme, MAGIC_QUERY, 1)[0]["source"] == "shared-mime-info-spec.pdf"
    for name in ("pip-dependency-resolution.md", "shared-mime-info-spec.pdf"):
        assert pipeline.upload(acme, name, delete=True)["deleted"] == [name]
    pipeline.ingest()

    # An explicit delete needs no confirmation, even of a partition's last document.
    assert pipeline.upload(acme, kept, delete=True)["deleted"] == [kept]
    assert pipeline.ingest()["totals"]["documents_deleted"] == 1
    assert pipeline.status(acme)["documents"] == pipeline.status(acme)["index_vectors"] == 0


def test_hashing_never_follows_a_link_nor_blocks_on_a_fifo_swapped_in_after_the_scan(embedded_pipeline, docs,
                                                                                     tmp_path, monkeypatch):
    secret = tmp_path / "outside.txt"
    secret.write_text("not in the landing zone\n")
    (tmp_path / "link.txt").symlink_to(secret)
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(RefusedFile, match="link.txt.*symbolic link") as refused:
        sha256_file(tmp_path / "link.txt")
    assert refused.value.code == "symlink"
    pipe, found = tmp_path / "pipe.txt", {}

    def hash_pipe() -> None:
        try:
            found["digest"] = sha256_file(pipe)
        except RefusedFile as exc:
            found["refused"] = exc

    reader = threading.Thread(target=hash_pipe, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # blocked in open() waiting for a writer: let it go, then fail
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("hashing a FIFO blocked")
    assert found["refused"].code == "special-file"
    assert "pipe.txt" in str(found["refused"]) and "not a regular file" in str(found["refused"])

    # A run lists the folder, then a file it must hash becomes a FIFO: skipped and reported, never read.
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
    landed = pipeline.home / "landing" / acme / "pip-dependency-resolution.md"
    os.utime(landed, ns=(1_700_000_000_000_000_000,) * 2)  # touched: the run must hash it
    state = tmp_path / "faults"
    monkeypatch.setenv("INGEST_FAULTS", "landing:after-scan=hold-once")
    monkeypatch.setenv("INGEST_FAULTS_STATE", str(state))
    runs: list = []
    partition = MultiPartitionKey({"tenant": acme, "month": current_month()})
    worker = threading.Thread(target=lambda: runs.append(materialize(
        [raw_documents], partition_key=partition, resources=build_resources(), instance=dagster_instance())))
    worker.start()
    held = state / "landing__after-scan.held"
    deadline = time.monotonic() + 120
    while not held.exists() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.exists(), "the run never reached the seam"
    landed.unlink()
    os.mkfifo(landed)
    held.unlink()
    worker.join(300)
    assert not worker.is_alive(), "the run blocked on the FIFO"
    [run] = runs
    assert run.success
    metadata = materialization_metadata(run, "raw_documents")
    assert metadata["files_refused"] == 1 and metadata["documents_new"] == 1


# ---- 2. configuration is read where and when the step runs -----------------------------------------

_RUN_IN_A_FRESH_WORKER = """
import json, os, sys
from dagster import DagsterInstance, MultiPartitionKey
from ingest_pipeline.definitions import defs   # imported (as a code server does) before the settings exist
os.environ.update(json.loads(sys.argv[1]))      # the run worker's own environment
tenant, month = sys.argv[2], sys.argv[3]
result = defs.resolve_job_def("ingest_job").execute_in_process(
    partition_key=MultiPartitionKey({"tenant": tenant, "month": month}), instance=DagsterInstance.get(),
    raise_on_error=False)
from ingest_pipeline.cli.runs import run_error
print(json.dumps({"success": result.success, "errors": [run_error(result)] if not result.success else []}))
"""


def _fresh_worker(pipeline, settings: dict, tenant: str, month: str) -> dict:
    """Run the tenant's partition in a new process whose definitions were imported before `settings` were set.
    DAGSTER_HOME and the instance's storage URL come from the test process (prepare_environment set them)."""
    env = {k: v for k, v in {**os.environ, **pipeline.env}.items()
           if k not in ("INGEST_PG_DSN", "INGEST_MASTER_KEY", "INGEST_CYBORGDB_URL", "INGEST_PROFILE")}
    completed = subprocess.run(
        [sys.executable, "-c", _RUN_IN_A_FRESH_WORKER, json.dumps(settings), tenant, month],
        env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_settings_are_read_by_the_run_not_at_import_and_never_fall_back_silently(tmp_path, embedded_pipeline,
                                                                                  docs, monkeypatch):
    from ingest_pipeline.runtime.settings import embedded_postgres_uri, stop_embedded_postgres

    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    server_home = tmp_path / "external-db"
    dsn = embedded_postgres_uri(server_home)
    try:
        monkeypatch.setenv("INGEST_PG_DSN", dsn)
        pipeline.upload(acme, docs / "apache-license-2.0.txt")
        month = pipeline.ledger().uploads.pending_partitions(acme)[0][1]
        # Definitions imported with no DSN and no key; the worker has both when the run starts.
        key = pipeline.env["INGEST_MASTER_KEY"]
        outcome = _fresh_worker(pipeline, {"INGEST_PG_DSN": dsn, "INGEST_MASTER_KEY": key}, acme, month)
        assert outcome == {"success": True, "errors": []}
        assert not (pipeline.home / "pgdata").exists() and not (pipeline.home / "master.key").exists()
        status = pipeline.status(acme)
        assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0

        # Production: a worker without the key fails, naming the variable, before writing anything.
        outcome = _fresh_worker(pipeline, {"INGEST_PROFILE": "production", "INGEST_PG_DSN": dsn,
                                           "INGEST_CYBORGDB_URL": "https://cyborgdb.internal",
                                           "INGEST_KEYS_DSN": KeyVault.beside(dsn).dsn}, acme, month)
        assert not outcome["success"] and "INGEST_MASTER_KEY is not set" in outcome["errors"][0]

        # Development: a worker without the key does not invent one for a ledger that has tenants.
        outcome = _fresh_worker(pipeline, {"INGEST_PG_DSN": dsn}, acme, month)
        assert not outcome["success"] and "already holds tenants" in outcome["errors"][0]
        assert not (pipeline.home / "master.key").exists()
        assert pipeline.status(acme) == status
    finally:
        stop_embedded_postgres(server_home)


# ---- 3. the writer's lock is fenced, and every wait is bounded --------------------------------------


def _lock_holders(dsn: str, tenant: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s::oid"
            " AND objid = hashtext(%s)::oid AND objsubid = 2",
            (locks.TENANT.classid, tenant),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_writer_whose_lock_connection_drops_stops_writing_and_the_retry_converges(embedded_pipeline, docs,
                                                                                     monkeypatch):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs)
    dsn = pipeline.ledger().dsn
    real_upsert, calls, unlocked_writes = TenantIndex.upsert, {"n": 0}, []

    def upsert_then_drop_the_lock(self, items):  # fault injector
        calls["n"] += 1
        if not _lock_holders(dsn, acme):
            unlocked_writes.append(calls["n"])
        real_upsert(self, items)
        if calls["n"] == 2:  # the lock's connection dies (a network blip, a server-side kill)
            with psycopg.connect(dsn, autocommit=True) as conn:
                for pid in _lock_holders(dsn, acme):
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    monkeypatch.setattr(TenantIndex, "upsert", upsert_then_drop_the_lock)
    result = materialize_partition(acme)
    assert result.success
    assert unlocked_writes == [], f"upserts without the tenant's lock: calls {unlocked_writes}"
    assert len(step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, "cyborgdb_index")) == 1
    status = pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 64
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_lock_waits_statements_and_cyborgdb_calls_are_bounded(embedded_pipeline, docs, monkeypatch):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    dsn = pipeline.ledger().dsn

    impatient = Ledger(dsn, lock_wait_s=0.5, statement_timeout_s=0.5)
    with Ledger(dsn).tenant_writer(acme):
        started = time.monotonic()
        with pytest.raises(TenantBusy, match="being written by another run"), impatient.tenant_writer(acme):
            pass
        assert time.monotonic() - started < 5
    with impatient.connect() as conn, pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(3)")

    resources = build_resources()
    indexes = resources["cyborgdb"].indexes
    index = indexes.open(resources["keyring"].tenant_keys(acme))
    index._timeout_s = 0.5
    index._handle = SimpleNamespace(upsert=lambda *args, **kwargs: time.sleep(3))  # fault injector: a hung call
    started = time.monotonic()
    with pytest.raises(IndexUnavailable, match="CallTimedOut"):
        index.upsert([{"id": "x", "vector": [0.0] * 384}])
    assert time.monotonic() - started < 2


def test_a_cyborgdb_call_that_timed_out_keeps_the_tenant_locked_until_it_ends(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    ledger = pipeline.ledger()
    resources = build_resources()
    index = resources["cyborgdb"].indexes.open(resources["keyring"].tenant_keys(acme))
    index._timeout_s = 0.3
    finished = {}
    index._handle = SimpleNamespace(  # fault injector: a delete that answers only after 2 s, then has written
        delete=lambda *args, **kwargs: (time.sleep(2), finished.setdefault("at", time.monotonic())))
    with ledger.tenant_writer(acme) as session:
        writer = IndexWriter(ledger, resources["cyborgdb"].indexes, resources["keyring"], session)
        writer._opened[1] = index
        with pytest.raises(IndexUnavailable, match="CallTimedOut"):
            writer.delete_ids(["00000000-0000-0000-0000-000000000000"], [1])
        gave_up = time.monotonic()
    released = time.monotonic()
    assert released - gave_up > 1.0 and "at" in finished and finished["at"] <= released
    # The next writer gets the lock only after the late call has ended.
    with Ledger(ledger.dsn).tenant_writer(acme):
        assert time.monotonic() >= finished["at"]


# ---- 4. a rebuild keeps search online and resumes ---------------------------------------------------


def test_rebuild_fills_a_new_index_beside_the_live_one_and_an_interrupted_rebuild_resumes(pipeline, docs,
                                                                                           monkeypatch):
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, *(docs / name for name in ("shared-mime-info-spec.pdf", "apache-license-2.0.txt",
                                                      "debian-users-and-groups.html")))
    pipeline.ingest()
    before = pipeline.status(acme)
    answer = cli.search(acme, [MAGIC_QUERY], 3, mode="vector")[0]  # cosine: a fused rank score moves with the corpus
    total = before["indexed"]
    assert total > 64  # more than the two batches written before the crash

    real_upsert, writes, seen_during_rebuild = TenantIndex.upsert, [], []

    def crash_after_two_batches(self, items):  # fault injector: the rebuild's run fails for good after two batches
        if self.generation > 1:
            if len(writes) == 2:
                seen_during_rebuild.append(cli.search(acme, [MAGIC_QUERY], 3, mode="vector")[0])
                # Not retried: the step's retries would meet the same fault, after 14 s of backoff.
                raise Failure("injected: CyborgDB went away", allow_retries=False)
            writes.append(len(items))
        return real_upsert(self, items)

    monkeypatch.setattr(TenantIndex, "upsert", crash_after_two_batches)
    assert cli.rebuild(acme)["success"] is False
    # Search never went empty: during the rebuild and after it failed, the live index answered.
    assert seen_during_rebuild and all(hits == answer for hits in seen_during_rebuild)
    assert cli.search(acme, [MAGIC_QUERY], 3, mode="vector")[0] == answer
    assert pipeline.status(acme) == before

    # Ingest goes on meanwhile; its writes reach the live index and the one being rebuilt.
    monkeypatch.setattr(TenantIndex, "upsert", real_upsert)
    pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    pipeline.ingest()
    grown = pipeline.status(acme)
    assert grown["chunks"] == grown["indexed"] == grown["index_vectors"] > total

    # The next rebuild resumes after the last batch written before the crash.
    ledger = pipeline.ledger()
    with ledger.connect() as conn:
        live, rebuilding, cursor = ledger.tenants.generations(conn, acme)
        remaining = conn.execute("SELECT count(*) AS n FROM ingest.chunks WHERE tenant_id = %s AND chunk_id > %s",
                                 (acme, cursor)).fetchone()["n"]
    assert (live, rebuilding) == (1, 2) and 0 < remaining < grown["indexed"]
    writes.clear()
    monkeypatch.setattr(TenantIndex, "upsert",
                        lambda self, items: (writes.append(len(items)), real_upsert(self, items))[1])
    assert cli.rebuild(acme)["success"]
    assert sum(writes) == remaining
    assert pipeline.status(acme) == grown
    assert cli.search(acme, [MAGIC_QUERY], 3, mode="vector")[0] == answer
    indexes = build_resources()["cyborgdb"].indexes
    assert not indexes.exists(acme, 1) and indexes.exists(acme, 2)
    assert all(check.passed for check in materialize_partition(acme).get_asset_check_evaluations())


def test_a_rebuild_lets_go_of_the_tenants_lock_between_segments_so_an_ingest_runs_meanwhile(
        embedded_pipeline, docs, tmp_path):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "shared-mime-info-spec.pdf")
    pipeline.ingest()
    before = pipeline.status(acme)
    state = tmp_path / "faults"
    rebuild = subprocess.Popen(
        [sys.executable, "-c", f"from ingest_pipeline import cli; import sys; "
                               f"sys.exit(0 if cli.rebuild({acme!r}, lock_segment_s=0)['success'] else 1)"],
        env={**os.environ, **pipeline.env, "INGEST_FAULTS": "rebuild:between-segments=hold-once",
             "INGEST_FAULTS_STATE": str(state)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held = state / "rebuild__between-segments.held"
    deadline = time.monotonic() + 240
    while not held.exists():
        assert rebuild.poll() is None and time.monotonic() < deadline, rebuild.communicate()[1][-3000:]
        time.sleep(0.1)
    # The rebuild has filled part of the new index and let go of the lock: an ingest runs now (it used to wait
    # for the whole rebuild, and fail TenantBusy after its lock wait), writing to both generations.
    ledger = pipeline.ledger()
    with ledger.connect() as conn:
        _, rebuilding, cursor = ledger.tenants.generations(conn, acme)
    assert rebuilding == 2 and cursor is not None
    pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    grown = pipeline.ingest(acme)
    assert grown["totals"]["documents_new"] == 1
    held.unlink()
    _, stderr = rebuild.communicate(timeout=600)
    assert rebuild.returncode == 0, stderr[-3000:]
    status = pipeline.status(acme)
    assert status["documents"] == 3 and status["chunks"] == status["indexed"] == status["index_vectors"]
    assert status["index_vectors"] > before["index_vectors"]
    with ledger.connect() as conn:
        assert ledger.tenants.generations(conn, acme)[:2] == (2, None)  # swapped to the rebuilt generation
    assert pipeline.search(acme, "How does pip resolve dependency conflicts?", 1)[0]["source"] == (
        "pip-dependency-resolution.md")
    assert pipeline.search(acme, MAGIC_QUERY, 1)[0]["source"] == "shared-mime-info-spec.pdf"


# ---- 5. integrity ------------------------------------------------------------------------------------


def test_an_older_ciphertext_put_back_behind_the_ledgers_back_is_refused(embedded_pipeline, tmp_path):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    note = tmp_path / "terms.md"
    note.write_text("# Terms\n\nThe notice period is thirty days from the date of the letter.\n")
    pipeline.upload(acme, note)
    pipeline.ingest()
    ledger = pipeline.ledger()
    (old,) = ledger_chunks(ledger, acme).values()
    note.write_text("# Terms\n\nThe notice period is ninety days from the date of the letter.\n")
    pipeline.upload(acme, note)
    pipeline.ingest()
    (new,) = ledger_chunks(ledger, acme).values()
    assert new["chunk_id"] == old["chunk_id"] and new["text_mac"] != old["text_mac"]
    assert "ninety" in pipeline.search(acme, "notice period", 1)[0]["text"]

    with ledger.connect() as conn:
        conn.execute("UPDATE ingest.chunks SET text_ciphertext = %s, embedding_ciphertext = %s WHERE chunk_id = %s",
                     (old["text_ciphertext"], old["embedding_ciphertext"], old["chunk_id"]))
    checks = {c.check_name: c for c in materialize_partition(acme).get_asset_check_evaluations()}
    assert not checks["ciphertexts_decrypt"].passed
    assert checks["ciphertexts_decrypt"].metadata["ciphertexts_failed"].value == 2
    result = pipeline.cli("search", "--tenant", acme, "notice period", check=False)
    assert result.returncode != 0 and "thirty" not in result.stdout + result.stderr


def test_search_refuses_an_index_built_by_another_model(embedded_pipeline, docs, tmp_path, monkeypatch):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    assert pipeline.search(acme, "patent license", 1)

    # The same files, one weight nudged: same names, same sizes, another model.
    bundled, other = bundled_model_path(), tmp_path / "retrained-model"
    shutil.copytree(bundled, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("INGEST_MODEL_PATH", str(other))
    with pytest.raises(EmbeddingModelMismatch, match="was built with model"):
        cli.search(acme, ["patent license"], 1)
    result = pipeline.cli("search", "--tenant", acme, "patent license", check=False)
    assert result.returncode == 2 and "was built with model" in result.stderr


# ---- 6. work that costs nothing costs nothing --------------------------------------------------------

_EMPTY_PARTITIONS = """
import json, sys, time
from dagster import MultiPartitionKey
from ingest_pipeline.definitions import build_definitions
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
prepare_environment()
job, instance = build_definitions().resolve_job_def("ingest_job"), dagster_instance()
timings = []
for month in sys.argv[2:]:
    started = time.perf_counter()
    result = job.execute_in_process(partition_key=MultiPartitionKey({"tenant": sys.argv[1], "month": month}),
                                    instance=instance, raise_on_error=False)
    timings.append(time.perf_counter() - started)
    assert result.success
print(json.dumps({"seconds": timings, "torch_imported": "torch" in sys.modules,
                  "sentence_transformers_imported": "sentence_transformers" in sys.modules}))
"""


def test_partitions_without_pending_work_never_load_the_model(embedded_pipeline, docs):
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    summary = pipeline.ingest()
    current_month = summary["runs"][0]["month"]
    # Months with no uploads, and the current month whose work is all done.
    months = ["2026-01-01", "2026-02-01", "2026-03-01", current_month]
    completed = subprocess.run([sys.executable, "-c", _EMPTY_PARTITIONS, acme, *months], capture_output=True,
                               text=True, env={**os.environ, **pipeline.env}, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["torch_imported"] is False and outcome["sentence_transformers_imported"] is False
    assert len(outcome["seconds"]) == 4
