"""Dagster resources: the Postgres ledger, the CyborgDB backend, the tenant keyring, the embedding model."""

from __future__ import annotations

import base64
from functools import cached_property

from dagster import ConfigurableResource
from pydantic import Field

from ingest_pipeline.core.chunking import Chunker
from ingest_pipeline.core.crypto import (
    CURRENT_KEY_VERSION,
    TenantKeys,
    VectorEncryptor,
    derive_tenant_keys,
    parse_master_key,
)
from ingest_pipeline.core.embedding import DEFAULT_BATCH_SIZE, Embedder, model_fingerprint, resolve_model_path
from ingest_pipeline.environment import development_master_key, ingest_home, postgres_dsn
from ingest_pipeline.landing import LandingZone
from ingest_pipeline.ledger import Ledger
from ingest_pipeline.vector_index import CyborgIndexes


class PostgresLedger(ConfigurableResource):
    """The PostgreSQL ledger and cold copy. An external server by DSN, or the embedded one under home."""

    dsn: str = Field(default="", description="External PostgreSQL DSN; empty starts the embedded server.")
    home: str = Field(default="", description="INGEST_HOME, where the embedded server keeps its data.")

    @cached_property
    def ledger(self) -> Ledger:
        ledger = Ledger(postgres_dsn(self.dsn, self.home or None))
        ledger.migrate()
        return ledger


class CyborgDB(ConfigurableResource):
    """The encrypted vector index: embedded cyborgdb-core on disk, or cyborgdb-service by URL."""

    url: str = Field(default="", description="cyborgdb-service base URL; empty uses embedded cyborgdb-core.")
    api_key: str = Field(default="", description="cyborgdb-service API key (CYBORGDB_SERVICE_ROOT_KEY).")
    home: str = Field(default="", description="INGEST_HOME; the embedded index lives in home/cyborgdb.")

    @cached_property
    def indexes(self) -> CyborgIndexes:
        if self.url:
            return CyborgIndexes(url=self.url, api_key=self.api_key)
        return CyborgIndexes(storage_dir=ingest_home(self.home or None) / "cyborgdb")


class TenantKeyring(ConfigurableResource):
    """Derives each tenant's data, MAC and index keys from the master key (INGEST_MASTER_KEY)."""

    master_key: str = Field(default="", description="Base64 32-byte master key; empty = development key file.")
    home: str = Field(default="", description="INGEST_HOME, where a development key is kept.")
    key_version: int = CURRENT_KEY_VERSION

    @cached_property
    def _master(self) -> bytes:
        if self.master_key:
            return parse_master_key(self.master_key)
        return development_master_key(ingest_home(self.home or None))

    def tenant_keys(self, tenant_id: str, key_version: int | None = None) -> TenantKeys:
        return derive_tenant_keys(self._master, tenant_id, key_version or self.key_version)

    def encryptor(self, tenant_id: str, key_version: int | None = None) -> VectorEncryptor:
        return VectorEncryptor(self.tenant_keys(tenant_id, key_version))

    def fingerprint(self) -> str:
        """A short public fingerprint of the master key, safe to show."""
        digest = derive_tenant_keys(self._master, "fingerprint").mac_key
        return base64.b32encode(digest[:5]).decode().lower()


class EmbeddingModel(ConfigurableResource):
    """A sentence-transformers model from local disk (default: the bundled all-MiniLM-L6-v2)."""

    model_path: str = Field(default="", description="Model folder; empty = bundled all-MiniLM-L6-v2.")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, description="Chunks per encode batch.")
    device: str = "cpu"

    @cached_property
    def embedder(self) -> Embedder:
        return Embedder(self.model_path, self.batch_size, self.device)

    @cached_property
    def model_id(self) -> str:
        """The model's fingerprint, recorded with a tenant's embeddings so models are never mixed."""
        return model_fingerprint(resolve_model_path(self.model_path))

    @cached_property
    def chunker(self) -> Chunker:
        """A chunker that counts tokens with this model's own tokenizer (no model weights needed)."""
        return Chunker(resolve_model_path(self.model_path) / "tokenizer.json")


class LandingZoneResource(ConfigurableResource):
    """Where uploads land: INGEST_HOME/landing/<tenant>/<document name>."""

    home: str = Field(default="", description="INGEST_HOME; uploads live in home/landing.")
    max_document_bytes: int = Field(default=50 * 1024 * 1024, description="Larger documents are quarantined.")

    @cached_property
    def zone(self) -> LandingZone:
        return LandingZone(ingest_home(self.home or None) / "landing")
