"""The fault matrix: a fault at every stage boundary (the seams of `ingest_pipeline.core.faults`), then the invariant.

- SIGKILL: `ingest-pipeline ingest` runs in a subprocess with INGEST_FAULTS=`<seam>=kill-once` and dies at the
  seam (no cleanup, no Dagster event); what it left is checked, then a plain re-run must converge.
- raise: the run meets InjectedFault at the seam once; the step's RetryPolicy must carry the same run through.

After either, the invariant holds and search answers exactly as a clean run on the same documents does.
"""

import os
import signal
import subprocess
import sys

import pytest
from dagster import DagsterEventType

from ingest_pipeline.core import faults
from ingest_pipeline_tests.helpers import materialize_partition, step_events
from ingest_pipeline_tests.reliability.invariant import assert_invariant, check_invariant, search_fingerprint

STEP_OF_SEAM = {"embed:before-commit": "chunk_embeddings", "embed:after-commit": "chunk_embeddings",
                "index:before-upsert": "cyborgdb_index", "index:after-upsert": "cyborgdb_index",
                "index:after-commit": "cyborgdb_index"}
INGEST_SEAMS = tuple(STEP_OF_SEAM)
assert set(INGEST_SEAMS) <= set(faults.SEAMS)
# The three stage boundaries: before the CyborgDB upsert, after it and before the Postgres commit, after the
# commit and before Dagster records success.
BOUNDARIES = ("index:before-upsert", "index:after-upsert", "index:after-commit")
# SIGKILL at every boundary, and mid-embedding, on the embedded backend; on the service, the boundary where the
# backend matters most (an upsert the service acknowledged, never committed in Postgres). test_service_faults kills
# the service itself around upserts.
KILL_CASES = [("embedded", seam) for seam in ("embed:before-commit", *BOUNDARIES)] + [("service", "index:after-upsert")]



def _tenant_chunks(pipeline, tenant: str) -> dict[str, int]:
    with pipeline.ledger().connect() as conn:
        rows = conn.execute("SELECT state, count(*) AS n FROM ingest.chunks WHERE tenant_id = %s GROUP BY state",
                            (tenant,)).fetchall()
    return {row["state"]: row["n"] for row in rows}


@pytest.mark.parametrize(("pipeline", "seam"), KILL_CASES, indirect=["pipeline"])
def test_sigkill_at_a_stage_boundary_then_a_rerun_converges(pipeline, small_docs, fault_state, scenario,
                                                            clean_references, seam):
    scenario.category = "fault"
    scenario.details = {"seam": seam, "action": "SIGKILL", "backend": pipeline.backend}
    reference = clean_references.fingerprint(pipeline, small_docs.iterdir())
    tenant = pipeline.tenant("acme")
    names = {path.name for path in small_docs.iterdir()}
    pipeline.upload(tenant, small_docs)

    env = {**os.environ, **pipeline.env, faults.ENV: f"{seam}=kill-once", faults.STATE_ENV: str(fault_state)}
    killed = subprocess.run([sys.executable, "-m", "ingest_pipeline.cli", "ingest", "--tenant", tenant, "--json"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert faults.marker(seam).exists()

    # What the kill left: exactly the gap this boundary opens, nothing else broken.
    left = check_invariant(tenant)
    states = _tenant_chunks(pipeline, tenant)
    scenario.details["left_behind"] = {"chunk_states": states, "extra_in_index": len(left["extra_in_index"])}
    assert left["undecryptable"] == 0 and left["duplicates"] == 0 and left["missing_from_index"] == []
    if seam == "index:after-upsert":
        # In CyborgDB, never committed in Postgres: the batch is in the index but still 'embedded'.
        assert 0 < len(left["extra_in_index"]) <= 32 and states.get("embedded", 0) >= len(left["extra_in_index"])
    else:
        assert left["extra_in_index"] == []
    if seam == "index:after-commit":
        assert set(states) == {"indexed"}  # all committed; only Dagster never heard of it
    elif seam.startswith("embed:"):
        assert states.get("indexed", 0) == 0 and states.get("chunked", 0) + states.get("embedded", 0) > 0

    pipeline.ingest(tenant)
    found = assert_invariant(tenant, names)
    scenario.add_invariant(found)
    assert search_fingerprint(pipeline, tenant) == reference
    status = pipeline.status(tenant)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 32
    assert pipeline.ledger().tenants.status(tenant).embeddings_computed == status["chunks"]  # none twice
    scenario.survived()


@pytest.mark.parametrize("seam", BOUNDARIES)
def test_an_error_at_a_stage_boundary_is_retried_by_the_same_run(embedded_pipeline, small_docs, fault_state,
                                                                 scenario, clean_references, monkeypatch, seam):
    pipeline = embedded_pipeline
    scenario.category = "fault"
    scenario.details = {"seam": seam, "action": "raise", "backend": pipeline.backend}
    reference = clean_references.fingerprint(pipeline, small_docs.iterdir())
    tenant = pipeline.tenant("acme")
    pipeline.upload(tenant, small_docs)

    monkeypatch.setenv(faults.ENV, f"{seam}=raise-once")
    result = materialize_partition(tenant)
    monkeypatch.delenv(faults.ENV)
    assert faults.marker(seam).exists()
    assert result.success
    step = STEP_OF_SEAM[seam]
    retries = step_events(result.run_id, DagsterEventType.STEP_UP_FOR_RETRY, step)
    assert len(retries) == 1, f"{step} was retried {len(retries)} times"
    assert all(check.passed for check in result.get_asset_check_evaluations())

    found = assert_invariant(tenant, {path.name for path in small_docs.iterdir()})
    scenario.add_invariant(found)
    assert search_fingerprint(pipeline, tenant) == reference
    # The retry resumed: no chunk embedded twice (an undone commit took its log entry with it).
    status = pipeline.status(tenant)
    assert status["chunks"] == status["indexed"] == status["index_vectors"]
    assert pipeline.ledger().tenants.status(tenant).embeddings_computed == status["chunks"]
    scenario.survived()
