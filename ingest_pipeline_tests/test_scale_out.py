"""The same code location, scaled out as far as one machine allows: an external PostgreSQL by DSN, the CyborgDB
service, the production profile (no fallback anywhere), the multiprocess executor (each step a process of its own),
the run started by the `dagster` CLI as a deployment's run worker starts it. (Queued runs launched by the daemon,
with run monitoring and retries: runtime/test_instance.py and defs/test_backfills.py.)"""

from dagster import DagsterEventType, DagsterRunStatus

from ingest_pipeline.runtime.instance import dagster_instance
from ingest_pipeline.runtime.settings import embedded_postgres_uri, stop_embedded_postgres
from ingest_pipeline.stores.key_vault import KeyVault
from ingest_pipeline_tests.daemons import execute_partition_run, run_status
from ingest_pipeline_tests.helpers import new_installation, step_events

MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}


def test_a_run_on_external_postgres_and_the_cyborgdb_service_with_the_multiprocess_executor(
    tmp_path, monkeypatch, cyborgdb_service, docs
):
    server_home = tmp_path / "db-server"  # a PostgreSQL server that is not under INGEST_HOME
    dsn = embedded_postgres_uri(server_home)
    try:
        pipeline = new_installation(tmp_path, monkeypatch, "service", cyborgdb_service)
        monkeypatch.setenv("INGEST_PG_DSN", dsn)
        monkeypatch.setenv("INGEST_KEYS_DSN", KeyVault.beside(dsn).dsn)  # production names its vault
        monkeypatch.setenv("INGEST_PROFILE", "production")
        acme = pipeline.tenant("acme")
        pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
        run_id = execute_partition_run(acme, MULTIPROCESS, tmp_path)
        assert run_status(run_id) == DagsterRunStatus.SUCCESS

        # Each step ran in a process of its own, started by the multiprocess executor.
        records = dagster_instance().all_logs(run_id, of_type=DagsterEventType.STEP_WORKER_STARTED)
        assert {record.step_key for record in records} >= {"raw_documents", "chunk_embeddings", "cyborgdb_index"}
        # The chunking step's process exits after it: it does not load the model for the embedding step.
        chunked = step_events(run_id, DagsterEventType.ASSET_MATERIALIZATION, "document_chunks")[0]
        metadata = chunked.dagster_event.event_specific_data.materialization.metadata
        assert metadata["documents_chunked"].value == 2 and metadata["model_preloaded"].value is False
        status = pipeline.status(acme)
        assert status["documents"] == 2
        assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
        assert not (pipeline.home / "pgdata").exists() and not (pipeline.home / "cyborgdb").exists()
        assert pipeline.search(acme, "What does the Apache License say about patents?", 1)[0]["source"] == (
            "apache-license-2.0.txt")
    finally:
        stop_embedded_postgres(server_home)
