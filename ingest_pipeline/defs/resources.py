"""Dagster resources: the Postgres ledger, the CyborgDB backend, the tenant keyring, the embedding model.

Every setting left unset here is read from the environment of the process that runs the step, when
the resource is first used (`Settings.from_env`), never at import: a code server and its run workers
may not share one environment. In development (the default `INGEST_PROFILE`) unset settings mean
the embedded defaults; with `INGEST_PROFILE=production` a missing one fails the step, naming it.
A deployment may also pin a field with `EnvVar("...")`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from functools import cached_property

import psycopg
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from ingest_pipeline.core.chunking import Chunker
from ingest_pipeline.core.crypto import TenantKeys, VectorEncryptor, parse_master_key
from ingest_pipeline.core.embedding import (
    DEFAULT_BATCH_SIZE,
    ONNX_INT8,
    TORCH,
    Embedder,
    OnnxInt8Embedder,
    backend_model_id,
    legacy_model_fingerprint,
    model_fingerprint,
    resolve_model_path,
)
from ingest_pipeline.core.sandbox import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TIMEOUT_S,
    ChunkingSpec,
    ExtractionSandbox,
    SandboxLimits,
    SandboxPool,
)
from ingest_pipeline.runtime.settings import (
    ConfigurationError,
    Settings,
    development_master_key,
    positive_setting,
    postgres_dsn,
)
from ingest_pipeline.stores.key_vault import KeyStore, KeyVault, TenantKeySet
from ingest_pipeline.stores.landing_zone import LandingZone
from ingest_pipeline.stores.ledger import Ledger
from ingest_pipeline.stores.tenant_index import DEFAULT_CALL_TIMEOUT_S, CyborgIndexes


class SettingsFromEnvironment(ConfigurableResource):
    """A resource that checks the run's settings when the step starts: a missing required variable fails the
    step at once, by name, before any work (and without retries: retrying cannot set a variable)."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        Settings.from_env()


class PostgresLedger(SettingsFromEnvironment):
    """The PostgreSQL ledger and cold copy: INGEST_PG_DSN, or the embedded server under INGEST_HOME."""

    dsn: str | None = Field(default=None, description="PostgreSQL DSN; unset reads INGEST_PG_DSN at run time.")
    statement_timeout_s: float = Field(default=120, description="Longest a statement or row-lock wait may take.")
    lock_wait_s: float = Field(default=300, description="Longest wait for another writer of the same tenant.")

    @cached_property
    def ledger(self) -> Ledger:
        settings = Settings.from_env()
        ledger = Ledger(postgres_dsn(self.dsn or settings.pg_dsn, settings.home),
                        statement_timeout_s=self.statement_timeout_s, lock_wait_s=self.lock_wait_s)
        ledger.migrate()
        return ledger


class CyborgDB(SettingsFromEnvironment):
    """The encrypted vector index: cyborgdb-service at INGEST_CYBORGDB_URL, or embedded cyborgdb-core on disk."""

    url: str | None = Field(default=None, description="cyborgdb-service URL; unset reads INGEST_CYBORGDB_URL.")
    api_key: str | None = Field(default=None, description="Service key; unset reads INGEST_CYBORGDB_API_KEY.")
    call_timeout_s: float = Field(default=DEFAULT_CALL_TIMEOUT_S, description="Longest a CyborgDB call may take.")

    @cached_property
    def indexes(self) -> CyborgIndexes:
        settings = Settings.from_env()
        url = self.url or settings.cyborgdb_url
        if url:
            return CyborgIndexes(url=url, api_key=self.api_key or settings.cyborgdb_api_key,
                                 timeout_s=self.call_timeout_s)
        return CyborgIndexes(storage_dir=settings.home / "cyborgdb", timeout_s=self.call_timeout_s)


class TenantKeyring(SettingsFromEnvironment):
    """Tenants' random keys, wrapped under the master key (INGEST_MASTER_KEY) in the key vault
    (INGEST_KEYS_DSN; by default the database `<ledger database>_keys` beside the ledger).

    Keys are read on every call (never cached across calls), so a rotation or an erasure by another
    process takes effect at once.
    """

    ledger: PostgresLedger
    master_key: str | None = Field(
        default=None, description="Base64 32-byte master key; set it only with EnvVar. Unset reads INGEST_MASTER_KEY."
    )
    keys_dsn: str | None = Field(default=None, description="Key vault DSN; unset reads INGEST_KEYS_DSN.")

    @cached_property
    def _master(self) -> bytes:
        settings = Settings.from_env()
        encoded = self.master_key or settings.master_key
        if encoded:
            return parse_master_key(encoded)
        return development_master_key(settings.home, has_tenants=lambda: self.ledger.ledger.tenants.exist())

    @cached_property
    def store(self) -> KeyStore:
        dsn = self.keys_dsn or Settings.from_env().keys_dsn
        vault = KeyVault(dsn) if dsn else KeyVault.beside(self.ledger.ledger.dsn)
        vault.migrate()
        return KeyStore(self._master, vault)

    def open_tenant(self, conn: psycopg.Connection, tenant_id: str) -> TenantKeySet:
        """The tenant's keys, created at random for a new tenant: call it on the tenant's locked session."""
        return self.store.open(conn, tenant_id, create=True)

    def keyset(self, tenant_id: str, conn: psycopg.Connection | None = None) -> TenantKeySet:
        """An existing tenant's keys (UnknownTenant, TenantErased or TenantKeyMismatch otherwise)."""
        if conn is not None:
            return self.store.open(conn, tenant_id)
        with self.ledger.ledger.connect() as own:
            return self.store.open(own, tenant_id)

    def tenant_keys(self, tenant_id: str, key_version: int | None = None) -> TenantKeys:
        return self.keyset(tenant_id).keys(key_version)

    def encryptor(self, tenant_id: str, key_version: int | None = None) -> VectorEncryptor:
        return self.keyset(tenant_id).encryptor(key_version)


class EmbeddingModel(ConfigurableResource):
    """A sentence-transformers model from local disk (default: the bundled all-MiniLM-L6-v2), run by PyTorch or
    by onnxruntime as an int8 export made locally (INGEST_EMBEDDING_BACKEND=onnx-int8).

    Nothing is loaded until a step has work for it: the tokenizer on the first document to chunk,
    the weights on the first chunk to embed.
    """

    model_path: str | None = Field(default=None, description="Model folder; unset reads INGEST_MODEL_PATH.")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, description="Chunks per encode batch.")
    backend: str | None = Field(default=None, description="torch or onnx-int8; unset reads INGEST_EMBEDDING_BACKEND.")
    device: str | None = Field(default=None, description="PyTorch device; unset reads INGEST_EMBEDDING_DEVICE (cpu).")

    @cached_property
    def resolved_path(self) -> str:
        return str(resolve_model_path(self.model_path or Settings.from_env().model_path))

    @cached_property
    def resolved_backend(self) -> str:
        return self.backend or Settings.from_env().embedding_backend

    @cached_property
    def embedder(self) -> Embedder | OnnxInt8Embedder:
        settings = Settings.from_env()
        if self.resolved_backend == ONNX_INT8:
            return OnnxInt8Embedder(self.resolved_path, self.batch_size, cache_dir=settings.home / "models")
        return Embedder(self.resolved_path, self.batch_size, self.device or settings.embedding_device)

    def preload(self) -> None:
        """Load the model on a background thread, so a step that chunks first does not wait for it later.
        A load that fails here fails again, with its error, where the model is used."""

        def load() -> None:
            with contextlib.suppress(Exception):
                _ = self.embedder

        threading.Thread(target=load, name="embedding-model-preload", daemon=True).start()

    @cached_property
    def model_id(self) -> str:
        """The model's fingerprint (and backend), recorded with a tenant's embeddings so they are never mixed."""
        return backend_model_id(model_fingerprint(self.resolved_path), self.resolved_backend)

    @cached_property
    def legacy_model_id(self) -> str:
        """This model's fingerprint as earlier releases computed it (recognised once, then upgraded); they
        ran PyTorch only."""
        return legacy_model_fingerprint(self.resolved_path) if self.resolved_backend == TORCH else ""

    @cached_property
    def chunker(self) -> Chunker:
        """A chunker that counts tokens with this model's own tokenizer (no model weights needed)."""
        return Chunker(resolve_model_path(self.resolved_path) / "tokenizer.json")


class LandingZoneResource(SettingsFromEnvironment):
    """Where uploads land: INGEST_HOME/landing/<tenant>/<document name>, and the bounds on reading them.

    Each document is read, extracted and chunked in a worker process (core/sandbox.py) whose address space
    is capped at `extraction_memory_mb` and whose time is capped at `extraction_timeout_s` (wall clock, and
    as much CPU): a document that needs more is quarantined as memory-limit or time-limit, with the limit it
    failed under (a run with a larger limit tries it again), and the step carries on with a fresh worker.
    `extraction_workers` such workers run side by side, each within those bounds.
    """

    max_document_bytes: int = Field(default=50 * 1024 * 1024, description="Larger documents are quarantined.")
    extraction_memory_mb: int | None = Field(
        default=None, description="Memory (RLIMIT_AS, MiB) for one document's extraction and chunking; unset "
        f"reads INGEST_EXTRACTION_MEMORY_MB at run time, else {DEFAULT_MEMORY_BYTES // 2**20}.",
    )
    extraction_timeout_s: float | None = Field(
        default=None, description="Seconds (wall clock, and as many CPU seconds) for one document's extraction "
        f"and chunking; unset reads INGEST_EXTRACTION_TIMEOUT_S at run time, else {DEFAULT_TIMEOUT_S:g}.",
    )
    extraction_workers: int | None = Field(
        default=None, ge=1, le=64, description="Worker processes that extract and chunk documents side by side; "
        "unset reads INGEST_EXTRACTION_WORKERS at run time, else 2 (1 where this process may use one core only).",
    )

    @cached_property
    def zone(self) -> LandingZone:
        return LandingZone(Settings.from_env().landing_dir)

    def current_limits(self) -> dict | None:
        """The extraction limits a run would use (SandboxLimits.as_dict), or None when a setting is invalid (the
        run itself then fails and names it): documents quarantined under smaller ones are due another try."""
        try:
            return self.sandbox_limits().as_dict()
        except ConfigurationError:
            return None

    def sandbox_limits(self) -> SandboxLimits:
        """The extraction bounds: these fields, else the environment, else the defaults; OCR's settings
        (INGEST_OCR, INGEST_OCR_LANGUAGES, its per-page and per-document bounds) from the environment."""
        memory_mb = self.extraction_memory_mb or positive_setting("INGEST_EXTRACTION_MEMORY_MB", int)
        timeout_s = self.extraction_timeout_s or positive_setting("INGEST_EXTRACTION_TIMEOUT_S", float)
        return SandboxLimits(
            memory_bytes=int(memory_mb * 2**20) if memory_mb else DEFAULT_MEMORY_BYTES,
            timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
            max_document_bytes=self.max_document_bytes,
            ocr=Settings.from_env().ocr,
        )

    def sandbox(self, chunking: ChunkingSpec | None = None) -> ExtractionSandbox:
        """A sandbox that reads, extracts and (with `chunking`) chunks documents within sandbox_limits()."""
        return ExtractionSandbox(self.sandbox_limits(), chunking)

    def sandbox_pool(self, chunking: ChunkingSpec | None = None) -> SandboxPool:
        """`extraction_workers` sandboxes side by side (each within sandbox_limits()), documents in order."""
        workers = self.extraction_workers or positive_setting("INGEST_EXTRACTION_WORKERS", int) \
            or min(2, len(os.sched_getaffinity(0)))
        return SandboxPool(self.sandbox_limits(), chunking, workers)
