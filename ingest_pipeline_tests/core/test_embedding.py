"""Embeddings: the model fingerprint (content, not sizes) and the int8 ONNX backend against PyTorch."""

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


def test_the_int8_onnx_export_embeds_like_the_pytorch_model_and_is_made_once(tmp_path):
    import numpy as np

    from ingest_pipeline.core.embedding import (
        INT8_SCHEME,
        ONNX_INT8,
        TORCH,
        Embedder,
        OnnxInt8Embedder,
        backend_model_id,
        bundled_model_path,
    )

    texts = ["The default priority of a magic rule is 50.", "Zebra crossings in Lisbon are painted white.",
             "xz streams start with six magic bytes.", "A short one.", "Licensed under the Apache License " * 20]
    int8 = OnnxInt8Embedder(str(bundled_model_path()), batch_size=2, cache_dir=tmp_path)
    exported = next(tmp_path.rglob(f"model_int8_{INT8_SCHEME}.onnx"))
    vectors, reference = int8.embed(texts), Embedder(str(bundled_model_path())).embed(texts)
    assert vectors.shape == reference.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    # Per-channel weights in a reduced range: the per-tensor export of earlier releases measured 0.81 at worst.
    assert cosines.min() > 0.97 and cosines.mean() > 0.98, cosines
    # The nearest neighbours agree: each text is closest to its own PyTorch vector.
    assert list((vectors @ reference.T).argmax(axis=1)) == list(range(5))
    modified = exported.stat().st_mtime_ns
    OnnxInt8Embedder(str(bundled_model_path()), cache_dir=tmp_path)
    assert exported.stat().st_mtime_ns == modified  # exported once per model content
    fingerprint = model_fingerprint(bundled_model_path())
    assert backend_model_id(fingerprint, TORCH) == fingerprint != backend_model_id(fingerprint, ONNX_INT8)
    # An index built by the per-tensor int8 export of earlier releases is refused, not extended.
    assert backend_model_id(fingerprint, ONNX_INT8) != f"{ONNX_INT8}:{fingerprint}"


def test_in_order_embedding_batches_texts_as_given_and_gives_the_same_vectors(monkeypatch):
    import numpy as np

    from ingest_pipeline.core.embedding import Embedder

    embedder = Embedder(batch_size=4)
    texts = [f"Document {i}: " + "word " * (i * 7 % 23 + 1) for i in range(10)]
    batches: list[list[str]] = []
    encode = embedder.model.encode

    def recording_encode(sentences, **kwargs):
        batches.append(list(sentences))
        return encode(sentences, **kwargs)

    monkeypatch.setattr(embedder.model, "encode", recording_encode)
    in_order = embedder.embed(texts, in_order=True)
    assert batches == [texts[0:4], texts[4:8], texts[8:10]]  # the caller's order, not encode's length sort
    batches.clear()
    default = embedder.embed(texts)
    assert batches == [texts]  # one call: encode sorts by characters and batches itself
    assert in_order.shape == (10, embedder.dimension) and in_order.dtype == np.float32
    assert np.allclose(in_order, default, atol=1e-5)  # padding differs, vectors do not
    assert np.allclose(np.linalg.norm(in_order, axis=1), 1.0, atol=1e-5)
