"""INGEST_EMBEDDING_BACKEND=onnx-int8 end to end, and an index never queried by another backend."""

import pytest

from ingest_pipeline import cli
from ingest_pipeline.work.search import EmbeddingModelMismatch
from ingest_pipeline_tests.helpers import materialize_partition, step_events

MAGIC_QUERY = "What is the default priority of a magic rule?"


def test_the_int8_backend_ingests_and_searches_and_the_backends_never_mix(embedded_pipeline, docs, monkeypatch):
    from dagster import DagsterEventType

    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    monkeypatch.setenv("INGEST_EMBEDDING_BACKEND", "onnx-int8")
    pipeline.upload(acme, docs / "shared-mime-info-spec.pdf", docs / "apache-license-2.0.txt")
    pipeline.ingest()
    status = pipeline.status(acme)
    assert status["chunks"] == status["indexed"] == status["index_vectors"] > 0
    assert pipeline.search(acme, MAGIC_QUERY, 1)[0]["source"] == "shared-mime-info-spec.pdf"
    assert (pipeline.home / "models").is_dir()  # exported locally, under INGEST_HOME

    # The PyTorch backend neither searches nor extends an index the int8 model built.
    monkeypatch.setenv("INGEST_EMBEDDING_BACKEND", "torch")
    with pytest.raises(EmbeddingModelMismatch, match="was built with model onnx-int8:"):
        cli.search(acme, [MAGIC_QUERY], 1)
    pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    run = materialize_partition(acme)
    assert not run.success
    failure = step_events(run.run_id, DagsterEventType.STEP_FAILURE, "chunk_embeddings")[0]
    assert "embedded with model onnx-int8:" in failure.dagster_event.step_failure_data.error.message

    monkeypatch.setenv("INGEST_EMBEDDING_BACKEND", "onnx-int8")
    pipeline.ingest()
    assert pipeline.status(acme)["documents"] == 3
