"""Faults of the engines themselves, mid-run: the CyborgDB service killed and restarted, PostgreSQL restarted,
transient CyborgDB errors (5xx, stalls past the timeout, dropped and refused connections) retried within the
call, and permanent ones (401, a wrong index key, a dimension mismatch) failing at once, naming the tenant,
with nothing half-written; after the cause is fixed, a re-run converges.

Runs hold at a seam of `ingest_pipeline.core.faults` (`hold-once`) while the test does something to the world, so
every fault lands at a known stage boundary.
"""

import secrets
import threading
from pathlib import Path

import pytest
from dagster import DagsterEventType

from ingest_pipeline.core import faults
from ingest_pipeline.core.ids import index_name
from ingest_pipeline.definitions import build_resources
from ingest_pipeline_tests.helpers import materialize_partition, step_events
from ingest_pipeline_tests.reliability.chaos import release, restart_postgres, stop_postgres, wait_held
from ingest_pipeline_tests.reliability.invariant import assert_invariant, search_fingerprint

SHORT_TIMEOUT = {"resources": {"cyborgdb": {"config": {"call_timeout_s": 3.0}}}}



@pytest.fixture
def one_doc(tmp_path) -> Path:
    """One short document (one chunk): enough for the index stage to have work, cheap to embed."""
    path = tmp_path / "one-doc" / "notice.md"
    path.parent.mkdir()
    path.write_text("# Notice\n\nThe notice period for the maintenance contract is thirty days.\n")
    return path


class Chaos(threading.Thread):
    """Does `actions` (seam -> callable) to the world while a run in the main thread is held at each seam,
    then releases the run. Errors are kept for the test to raise."""

    def __init__(self, actions: dict):
        super().__init__(daemon=True)
        self.actions, self.errors, self.done = actions, [], []

    def run(self) -> None:
        try:
            for seam, action in self.actions.items():
                wait_held(seam)
                try:
                    action()
                finally:
                    release(seam)
                self.done.append(seam)
        except BaseException as exc:  # reported by check()
            self.errors.append(exc)

    def check(self) -> None:
        self.join(timeout=120)
        if self.errors:
            raise self.errors[0]
        assert self.done == list(self.actions), f"only {self.done} of {list(self.actions)} happened"


def _states(pipeline, tenant: str) -> dict[str, int]:
    with pipeline.ledger().connect() as conn:
        rows = conn.execute("SELECT state, count(*) AS n FROM ingest.chunks WHERE tenant_id = %s GROUP BY state",
                            (tenant,)).fetchall()
    return {row["state"]: row["n"] for row in rows}


def _retries(result, step: str) -> int:
    return len(step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, step))


def _failure(result, step: str) -> str:
    failures = step_events(result.run_id, DagsterEventType.STEP_FAILURE, step)
    assert len(failures) == 1, f"expected one failure of {step}"
    return failures[0].dagster_event.step_failure_data.error.message


# ---- engines going away mid-run ------------------------------------------------------------------------


def test_the_cyborgdb_service_killed_and_restarted_mid_run(proxied_pipeline, killable_service, small_docs,
                                                          fault_state, scenario, clean_references, monkeypatch):
    pipeline = proxied_pipeline
    scenario.details = {"backend": "service", "faults": ["SIGKILL before an upsert", "SIGKILL after an upsert"]}
    reference = clean_references.fingerprint(pipeline, small_docs.iterdir())
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, small_docs)

    def kill_then_restart_while_the_upsert_retries():
        killable_service.kill()  # the upsert meets refused connections until the service is back
        threading.Timer(1.5, killable_service.start, kwargs={"wait": False}).start()

    def kill_and_restart_after_the_upsert():
        killable_service.wait_healthy()
        killable_service.kill()  # the batch was acknowledged: it must have been durable
        killable_service.start()

    chaos = Chaos({"index:before-upsert": kill_then_restart_while_the_upsert_retries,
                   "index:after-upsert": kill_and_restart_after_the_upsert})
    monkeypatch.setenv(faults.ENV, "index:before-upsert=hold-once,index:after-upsert=hold-once")
    chaos.start()
    result = materialize_partition(tenant)
    monkeypatch.delenv(faults.ENV)
    chaos.check()
    assert killable_service.starts >= 3
    assert result.success
    # Both outages were ridden out inside the CyborgDB calls (retries with backoff), not by failing the step.
    assert _retries(result, "cyborgdb_index") == 0
    scenario.add_invariant(assert_invariant(tenant, {p.name for p in small_docs.iterdir()}))
    assert search_fingerprint(pipeline, tenant) == reference
    scenario.survived(2)


def test_postgres_restarted_mid_run(embedded_pipeline, small_docs, fault_state, scenario, clean_references,
                                    monkeypatch):
    pipeline = embedded_pipeline
    scenario.details = {"backend": "embedded", "faults": ["Postgres restart while embeddings are uncommitted",
                                                          "Postgres restart after an upsert, before its commit"]}
    reference = clean_references.fingerprint(pipeline, small_docs.iterdir())
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, small_docs)

    def restart():
        restart_postgres(pipeline.home, down_s=1.0)

    chaos = Chaos({"embed:before-commit": restart, "index:after-upsert": restart})
    monkeypatch.setenv(faults.ENV, "embed:before-commit=hold-once,index:after-upsert=hold-once")
    chaos.start()
    try:
        result = materialize_partition(tenant)
        monkeypatch.delenv(faults.ENV)
        chaos.check()
        assert result.success
        # Each restart cut the step's connection mid-transaction; the step's RetryPolicy carried the run through.
        assert _retries(result, "chunk_embeddings") == 1
        assert _retries(result, "cyborgdb_index") == 1
        scenario.add_invariant(assert_invariant(tenant, {p.name for p in small_docs.iterdir()}))
        assert search_fingerprint(pipeline, tenant) == reference
        status = pipeline.status(tenant)
        assert pipeline.ledger().tenants.status(tenant).embeddings_computed == status["chunks"]
    finally:
        stop_postgres(pipeline.home)  # the fixture's own stop cannot reach a server restarted elsewhere
    scenario.survived(2)


# ---- transient CyborgDB errors: retried with backoff within the call -----------------------------------


def test_5xx_stalls_dropped_and_refused_connections_are_retried_then_succeed(
        proxied_pipeline, service_proxy, small_docs, fault_state, scenario, clean_references, monkeypatch):
    pipeline = proxied_pipeline
    reference = clean_references.fingerprint(pipeline, small_docs.iterdir())
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, small_docs)

    def arm_the_proxy():
        # The first upsert meets three 503s, then a dropped connection, then a stall past the timeout (urllib3
        # replays a dropped or timed-out request once, so each takes two requests).
        service_proxy.fail_next("503", 3)
        service_proxy.fail_next("reset", 2)
        service_proxy.fail_next("stall", 2)

    def refuse_connections():
        service_proxy.refuse_for(2.0)  # the next calls meet ECONNREFUSED for 2 s

    chaos = Chaos({"index:before-upsert": arm_the_proxy, "index:after-upsert": refuse_connections})
    monkeypatch.setenv(faults.ENV, "index:before-upsert=hold-once,index:after-upsert=hold-once")
    chaos.start()
    result = materialize_partition(tenant, SHORT_TIMEOUT)
    monkeypatch.delenv(faults.ENV)
    chaos.check()
    served = dict(service_proxy.served)
    scenario.details = {"backend": "service", "served": served}
    assert served == {"503": 3, "reset": 2, "stall": 2, "refused": 1}
    assert service_proxy.pending_faults == 0
    assert result.success
    assert _retries(result, "cyborgdb_index") == 0  # retried inside the call, with backoff
    scenario.add_invariant(assert_invariant(tenant, {p.name for p in small_docs.iterdir()}))
    assert search_fingerprint(pipeline, tenant) == reference
    scenario.survived(4)


# ---- permanent errors: no retry, a clear failure naming the tenant, nothing half-written ------------------


def _expect_fail_fast(pipeline, tenant: str, run_config=None) -> str:
    result = materialize_partition(tenant, run_config)
    assert not result.success
    message = _failure(result, "cyborgdb_index")
    assert _retries(result, "cyborgdb_index") == 0
    assert tenant in message
    # Nothing half-written: the batch stays 'embedded' in Postgres, and the index holds nothing of it.
    assert set(_states(pipeline, tenant)) == {"embedded"}
    return message


def test_a_refused_api_key_fails_at_once_naming_the_tenant(proxied_pipeline, service_proxy, one_doc, scenario,
                                                          monkeypatch):
    pipeline = proxied_pipeline
    scenario.details = {"backend": "service", "fault": "HTTP 401"}
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, one_doc)
    monkeypatch.setenv("INGEST_CYBORGDB_API_KEY", secrets.token_hex(24))
    before = service_proxy.requests
    message = _expect_fail_fast(pipeline, tenant)
    assert "refused the credentials" in message and "HTTP 401" in message and "INGEST_CYBORGDB_API_KEY" in message
    assert service_proxy.requests - before == 1  # one request, never retried

    monkeypatch.setenv("INGEST_CYBORGDB_API_KEY", pipeline.env["INGEST_CYBORGDB_API_KEY"])
    assert not build_resources()["cyborgdb"].indexes.exists(tenant)  # nothing was created either
    pipeline.ingest(tenant)
    scenario.add_invariant(assert_invariant(tenant, {one_doc.name}))
    assert pipeline.search(tenant, "notice period", 1)[0]["source"] == one_doc.name
    scenario.survived()


def _foreign_index(pipeline, tenant: str, key: bytes, dimension: int) -> tuple:
    """Create the tenant's index behind the pipeline's back (another master key, another model): returns the
    raw client and the index name, to drop it once the failure has been seen."""
    name = index_name(tenant, 1)
    if pipeline.backend == "embedded":
        import cyborgdb_core

        client = cyborgdb_core.Client(storage_config=cyborgdb_core.StorageConfig.disk(str(pipeline.home / "cyborgdb")))
    else:
        import cyborgdb

        client = cyborgdb.Client(base_url=pipeline.env["INGEST_CYBORGDB_URL"],
                                 api_key=pipeline.env["INGEST_CYBORGDB_API_KEY"])
    client.create_index(name, key, dimension=dimension, metric="cosine")
    return client, name


@pytest.mark.parametrize("fault", ["wrong-index-key", "dimension-mismatch"])
def test_a_wrong_index_key_or_dimension_fails_at_once_and_a_rerun_converges(pipeline, one_doc, scenario, fault):
    scenario.details = {"backend": pipeline.backend, "fault": fault}
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, one_doc)
    resources = build_resources()
    with resources["ledger"].ledger.connect() as conn:  # the tenant's keys, as its first run would create them
        tenant_key = resources["keyring"].open_tenant(conn, tenant).keys().index_key
    key, dimension = (secrets.token_bytes(32), 384) if fault == "wrong-index-key" else (tenant_key, 8)
    client, name = _foreign_index(pipeline, tenant, key, dimension)

    message = _expect_fail_fast(pipeline, tenant)
    if fault == "wrong-index-key":
        assert "does not open with this master key" in message
    else:
        assert "holds 8-d vectors, the model makes 384-d" in message
    assert "notice" not in message.lower()

    # The cause is removed (the stray index dropped): the next run converges.
    handle = client.load_index(name, key)
    handle.delete_index(**({"index_key": key} if pipeline.backend == "embedded" else {}))
    pipeline.ingest(tenant)
    scenario.add_invariant(assert_invariant(tenant, {one_doc.name}))
    assert pipeline.search(tenant, "notice period", 1)[0]["source"] == one_doc.name
    scenario.survived()
