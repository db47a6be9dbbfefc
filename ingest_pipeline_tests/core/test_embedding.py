"""The model fingerprint identifies a model by the content of its weights, not their sizes."""

import os

from ingest_pipeline.core.embedding import legacy_model_fingerprint, model_fingerprint


def _model(folder, weights: bytes):
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 4}')
    (folder / "tokenizer.json").write_text('{"model": {}}')
    (folder / "README.md").write_text("about this model")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_weights_of_the_same_size_but_other_content_give_another_fingerprint(tmp_path):
    first = _model(tmp_path / "first", bytes(range(256)) * 64)
    second = _model(tmp_path / "second", bytes(reversed(range(256))) * 64)
    assert model_fingerprint(first) != model_fingerprint(second)
    # The sizes-only fingerprint of earlier releases could not tell them apart.
    assert legacy_model_fingerprint(first) == legacy_model_fingerprint(second)


def test_fingerprint_is_stable_ignores_documentation_and_sees_a_rewritten_weight_file(tmp_path):
    model = _model(tmp_path / "model", bytes(range(256)) * 64)
    before = model_fingerprint(model)
    (model / "README.md").write_text("edited")
    assert model_fingerprint(model) == before
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(255 - b for b in weights.read_bytes()))  # same size, other content
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert model_fingerprint(model) != before
