"""The UI the way Dagster users run it: `dagster-webserver` alone on 127.0.0.1, asked through its GraphQL API.

One webserver serves the whole module, on the instance of an installation whose sample documents were uploaded
and ingested, so the asset graph, the sensor and schedules, the latest materializations and check results are
what a user opening the UI would see.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ingest_pipeline.runtime.instance import PROJECT_ROOT, prepare_environment
from ingest_pipeline.runtime.settings import stop_embedded_postgres
from ingest_pipeline_tests.helpers import CORPUS, free_port, new_installation

ASSETS = ["raw_documents", "document_chunks", "chunk_embeddings", "cyborgdb_index"]
CHECKS = {"index_matches_ledger", "ciphertexts_decrypt", "sample_recall_at_10"}
SCHEDULES = {"pending_work_schedule": "0 2 * * *", "weekly_reconciliation_schedule": "0 3 * * 0"}
# The documents of the `docs` fixture: txt, md, pdf and html.
DOCUMENTS = ["acme/apache-license-2.0.txt", "globex/pip-dependency-resolution.md", "acme/shared-mime-info-spec.pdf",
             "globex/debian-users-and-groups.html"]
STARTUP_SECONDS = 120

METADATA_ENTRY = """label __typename
  ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } ... on TextMetadataEntry { text }"""


class Webserver:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def query(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert not answer.get("errors"), answer["errors"]
        return answer["data"]

    def repository(self) -> dict:
        """The single repository of the code location, with its sensors and schedules."""
        data = self.query("""{ repositoriesOrError { __typename ... on RepositoryConnection { nodes {
            name location { name }
            sensors { name minIntervalSeconds sensorState { status } }
            schedules { name cronSchedule executionTimezone scheduleState { status } } } } } }""")
        nodes = data["repositoriesOrError"].get("nodes")
        assert nodes and len(nodes) == 1, data
        return nodes[0]


def _wait_until_loaded(server: Webserver) -> None:
    """Until the webserver answers and its code location has loaded (a repository is listed)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"dagster-webserver exited: {server.log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError, AssertionError, KeyError, ValueError):
            server.repository()
            return
        if time.monotonic() > deadline:
            pytest.fail(f"dagster-webserver did not load the code location: "
                        f"{server.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """An installation with the sample documents uploaded and ingested, and `dagster-webserver` on its instance."""
    saved_environ = dict(os.environ)
    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline = new_installation(root, monkeypatch, "embedded", None)
        try:
            docs = root / "docs"
            docs.mkdir()
            for name in DOCUMENTS:
                shutil.copyfile(CORPUS / name, docs / Path(name).name)
            tenant = pipeline.tenant("acme")
            pipeline.upload(tenant, docs)
            summary = pipeline.ingest(tenant)
            status = pipeline.status(tenant)

            prepare_environment()  # DAGSTER_HOME, INGEST_DAGSTER_PG_URL ... in os.environ, which the webserver reads
            port, log = free_port(), root / "webserver.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(PROJECT_ROOT / "workspace.yaml"),
                     "-h", "127.0.0.1", "-p", str(port)],
                    cwd=PROJECT_ROOT, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
            server = Webserver(f"http://127.0.0.1:{port}", process, log)
            try:
                _wait_until_loaded(server)
                yield {"server": server, "tenant": tenant, "summary": summary, "status": status}
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
        finally:
            stop_embedded_postgres(pipeline.home)
    os.environ.clear()
    os.environ.update(saved_environ)


def _path(key: dict) -> str:
    return "/".join(key["path"])


def _metadata(entries: list[dict]) -> dict:
    values = {}
    for entry in entries:
        for field in ("intValue", "floatValue", "text"):
            if field in entry:
                values[entry["label"]] = entry[field]
    return values


def test_the_asset_graph_has_the_four_stages_their_edges_and_the_checks(ui):
    data = ui["server"].query("""{ assetNodes {
        assetKey { path } groupName description isPartitioned
        partitionDefinition { type dimensionTypes { name type } }
        dependencyKeys { path } dependedByKeys { path }
        assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }""")
    nodes = {_path(node["assetKey"]): node for node in data["assetNodes"]}
    assert sorted(nodes) == sorted(ASSETS)
    for position, name in enumerate(ASSETS):
        node = nodes[name]
        assert node["groupName"] == "ingestion"
        assert node["description"] and len(node["description"]) > 80
        assert node["isPartitioned"]
        assert node["partitionDefinition"]["type"] == "MULTIPARTITIONED"
        assert {(d["name"], d["type"]) for d in node["partitionDefinition"]["dimensionTypes"]} == {
            ("tenant", "DYNAMIC"), ("month", "TIME_WINDOW")}
        assert [_path(k) for k in node["dependencyKeys"]] == ASSETS[max(position - 1, 0):position]
        assert [_path(k) for k in node["dependedByKeys"]] == ASSETS[position + 1:position + 2]
    checks = {name: {c["name"] for c in nodes[name]["assetChecksOrError"]["checks"]} for name in ASSETS}
    assert checks == {"raw_documents": set(), "document_chunks": set(), "chunk_embeddings": set(),
                      "cyborgdb_index": CHECKS}


def test_the_upload_sensor_is_running_by_default(ui):
    sensors = {s["name"]: s for s in ui["server"].repository()["sensors"]}
    assert sensors["upload_sensor"]["sensorState"]["status"] == "RUNNING"
    assert sensors["upload_sensor"]["minIntervalSeconds"] == 15


def test_the_schedules_are_running_by_default_with_their_cron_strings(ui):
    schedules = {s["name"]: s for s in ui["server"].repository()["schedules"]}
    assert set(SCHEDULES) <= set(schedules), f"schedules in the UI: {sorted(schedules)}"
    for name, cron in SCHEDULES.items():
        assert schedules[name]["cronSchedule"] == cron
        assert schedules[name]["executionTimezone"] == "UTC"
        assert schedules[name]["scheduleState"]["status"] == "RUNNING"


def test_a_sensor_tick_preview_gives_the_reason_it_skips(ui):
    """What "Preview tick result" shows in the UI: with every upload handled, the sensor skips and says why."""
    server, repository = ui["server"], ui["server"].repository()
    selector = {"repositoryName": repository["name"], "repositoryLocationName": repository["location"]["name"],
                "sensorName": "upload_sensor"}
    data = server.query("""mutation DryRun($selector: SensorSelector!, $cursor: String) {
        sensorDryRun(selectorData: $selector, cursor: $cursor) { __typename
          ... on DryRunInstigationTick { evaluationResult { skipReason runRequests { runKey } error { message } } }
          ... on PythonError { message } } }""",
                        {"selector": selector, "cursor": json.dumps({"deferred": {}, "upload_id": 2**31})})
    result = data["sensorDryRun"]["evaluationResult"]
    assert result["error"] is None and not result["runRequests"]
    assert result["skipReason"] == "no new uploads"


def test_a_schedule_tick_preview_gives_the_reason_it_skips(ui):
    """With every partition ingested, the nightly sweep has nothing to request and says so."""
    server, repository = ui["server"], ui["server"].repository()
    assert "pending_work_schedule" in {s["name"] for s in repository["schedules"]}, "the schedule is not wired"
    selector = {"repositoryName": repository["name"], "repositoryLocationName": repository["location"]["name"],
                "scheduleName": "pending_work_schedule"}
    data = server.query("""mutation DryRun($selector: ScheduleSelector!, $timestamp: Float) {
        scheduleDryRun(selectorData: $selector, timestamp: $timestamp) { __typename
          ... on DryRunInstigationTick { evaluationResult { skipReason runRequests { runKey } error { message } } }
          ... on PythonError { message } } }""", {"selector": selector, "timestamp": time.time()})
    result = data["scheduleDryRun"]["evaluationResult"]
    assert result["error"] is None and not result["runRequests"]
    assert result["skipReason"].startswith("no pending work in "), result


def test_the_latest_materializations_carry_the_figures_of_the_ledger(ui):
    data = ui["server"].query("""query Latest($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) {
        assetKey { path } assetMaterializations(limit: 1) { runId partition metadataEntries { """
                              + METADATA_ENTRY + " } } } }",
                              {"keys": [{"path": ["chunk_embeddings"]}, {"path": ["cyborgdb_index"]}]})
    latest = {_path(node["assetKey"]): node["assetMaterializations"] for node in data["assetNodes"]}
    status, (run,) = ui["status"], ui["summary"]["runs"]
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0

    (embeddings,) = latest["chunk_embeddings"]
    assert embeddings["runId"] == run["run_id"] and ui["tenant"] in embeddings["partition"]
    figures = _metadata(embeddings["metadataEntries"])
    assert figures["chunks_embedded"] == status["chunks"]
    assert figures["dimension"] == 384
    assert figures["duration_s"] >= figures["embedding_seconds"] > 0
    assert figures["chunks_per_second"] == pytest.approx(figures["chunks_embedded"] / figures["embedding_seconds"],
                                                         rel=0.05)

    (index,) = latest["cyborgdb_index"]
    assert index["runId"] == run["run_id"] and index["partition"] == embeddings["partition"]
    figures = _metadata(index["metadataEntries"])
    assert figures["chunks_upserted"] == status["indexed"]
    assert figures["index_vectors"] == status["index_vectors"]
    assert figures["chunks_removed"] == 0 and figures["upsert_batches"] >= 1
    assert "embedded" in figures["backend"] and figures["duration_s"] > 0


def test_the_latest_checks_of_the_index_passed(ui):
    data = ui["server"].query("""{ assetNodes(assetKeys: [{path: ["cyborgdb_index"]}]) {
        assetChecksOrError { __typename ... on AssetChecks { checks { name
          executionForLatestMaterialization { runId status partition evaluation { success } } } } } } }""")
    (node,) = data["assetNodes"]
    executions = {c["name"]: c["executionForLatestMaterialization"] for c in node["assetChecksOrError"]["checks"]}
    assert set(executions) == CHECKS
    for name, execution in executions.items():
        assert execution is not None, f"{name} has no execution for the latest materialization"
        assert execution["runId"] == ui["summary"]["runs"][0]["run_id"]
        assert execution["status"] == "SUCCEEDED" and execution["evaluation"]["success"], (name, execution)
