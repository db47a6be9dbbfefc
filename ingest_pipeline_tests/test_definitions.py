"""The code location as Dagster sees it: definitions, partitions, the shared instance and the UI."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import psycopg
from dagster import AssetKey, DagsterInstance
from dagster_postgres import PostgresRunStorage

from ingest_pipeline.definitions import build_definitions
from ingest_pipeline.defs.partitions import tenant_month_partitions, tenant_partitions
from ingest_pipeline.runtime.instance import PROJECT_ROOT, dagster_instance
from ingest_pipeline.runtime.settings import embedded_postgres_uri, stop_embedded_postgres
from ingest_pipeline_tests.helpers import free_port

ASSETS = ["raw_documents", "document_chunks", "chunk_embeddings", "cyborgdb_index"]


def test_definitions_describe_a_four_stage_partitioned_graph():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for upstream, downstream in zip(ASSETS, ASSETS[1:], strict=False):
        assert AssetKey(upstream) in graph.get(AssetKey(downstream)).parent_keys
    for name in ASSETS:
        node = graph.get(AssetKey(name))
        assert node.description and len(node.description) > 80
        assert node.group_name == "ingestion" and node.owners
        assert node.partitions_def.partition_dimension_names == ["month", "tenant"]
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"index_matches_ledger", "ciphertexts_decrypt", "sample_recall_at_10"}


def test_partition_count_stays_within_dagster_guidance_for_1000_tenants_over_3_years():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(tenant_partitions.name, [f"tenant-{i:04d}" for i in range(1000)])
    keys = tenant_month_partitions.get_partition_keys(current_time=datetime(2028, 12, 31),
                                                      dynamic_partitions_store=instance)
    assert len(keys) == 36_000 <= 100_000


def test_runs_land_in_the_postgres_instance_the_ui_reads(embedded_pipeline, docs):
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    summary = embedded_pipeline.ingest()
    instance = dagster_instance()
    assert isinstance(instance.run_storage, PostgresRunStorage)
    run = instance.get_run_by_id(summary["runs"][0]["run_id"])
    assert run.tags["dagster/partition/tenant"] == acme and run.is_success
    assert acme in instance.get_dynamic_partitions("tenants")

    # `make dev`: the UI starts on the same instance and lists that run.
    port = free_port()
    env = {**os.environ, **embedded_pipeline.env}
    ui = subprocess.Popen([sys.executable, "-m", "ingest_pipeline.cli", "dev", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        query = json.dumps({"query": "{ runsOrError { ... on Runs { results { runId status } } } }"}).encode()
        deadline, runs = time.monotonic() + 120, None
        while runs is None and time.monotonic() < deadline and ui.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    runs = json.load(response)["data"]["runsOrError"]["results"]
            except OSError:
                time.sleep(1)
        assert runs is not None, "the Dagster UI did not answer"
        assert {"runId": run.run_id, "status": "SUCCESS"} in runs
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


def test_an_external_postgres_by_dsn_holds_the_ledger_and_the_dagster_instance(tmp_path, monkeypatch, docs):
    from ingest_pipeline import cli
    from ingest_pipeline.core.crypto import generate_master_key

    server_home = tmp_path / "db-server"  # a PostgreSQL server that is not under INGEST_HOME
    dsn = embedded_postgres_uri(server_home)
    home = tmp_path / "home"
    for name, value in {"INGEST_HOME": str(home), "INGEST_PG_DSN": dsn,
                        "INGEST_MASTER_KEY": generate_master_key()}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("INGEST_CYBORGDB_URL", raising=False)
    try:
        cli.upload("ext", [str(docs / "apache-license-2.0.txt")])
        summary = cli.ingest("ext", show_progress=False)
        assert summary["failed_runs"] == 0
        assert not (home / "pgdata").exists()
        status = cli.status("ext")["tenants"]["ext"]
        assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
        run = dagster_instance().get_run_by_id(summary["runs"][0]["run_id"])
        assert run.is_success and "host=" + str(server_home) in os.environ["INGEST_DAGSTER_PG_URL"]
    finally:
        stop_embedded_postgres(server_home)


def test_dagster_definitions_validate_passes_in_the_environment_ingest_pipeline_env_prints(embedded_pipeline):
    exports = embedded_pipeline.run_cli("env").stdout
    env = {**os.environ, **embedded_pipeline.env}
    for line in exports.splitlines():
        name, value = line.removeprefix("export ").split("=", 1)
        env[name] = shlex.split(value)[0]
    assert env["DAGSTER_HOME"] == str(PROJECT_ROOT) and (PROJECT_ROOT / "dagster.yaml").is_file()
    result = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w",
                             str(PROJECT_ROOT / "workspace.yaml")], env=env, cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_dagster_and_dg_commands_work_in_a_fresh_shell_in_the_project_root(tmp_path):
    """`dagster definitions validate` and `dg check defs` as a Dagster user types them: no DAGSTER_* or INGEST_*
    variable but an INGEST_HOME of its own (the embedded default, whose server starts in about a second); the
    instance dagster.yaml describes puts Dagster's tables on that home's embedded PostgreSQL."""
    home = tmp_path / "home"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DAGSTER_", "INGEST_"))}
    env |= {"INGEST_HOME": str(home), "HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    bin_dir = Path(sys.executable).parent
    try:
        for command, success in (
                ([str(bin_dir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                 "All code locations passed validation"),
                ([str(bin_dir / "dg"), "check", "defs"], "All definitions loaded successfully")):
            result = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command[1:]}: {result.stderr[-3000:]}"
            assert success in result.stderr + result.stdout
        with psycopg.connect(embedded_postgres_uri(home)) as conn:
            tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"runs", "event_logs", "jobs"} <= tables
        assert (home / "dagster" / "storage").is_dir()
    finally:
        stop_embedded_postgres(home)
