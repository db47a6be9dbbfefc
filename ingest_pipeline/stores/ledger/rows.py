"""The ledger's row types: what its queries return and what its writes take, by name, never by position.

Types read from a query carry the query's column names as field names (they are built with psycopg's
`class_row`); the NamedTuples are what callers hand to a write.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import NamedTuple


def columns(row_type: type) -> tuple[str, ...]:
    """The field names of a row type, in order (the columns a query for it selects)."""
    return tuple(field.name for field in fields(row_type))


@dataclass(frozen=True, slots=True)
class Upload:
    """One upload event of the append-only log (`ingest.uploads`)."""

    upload_id: int
    tenant_id: str
    doc_id: str
    doc_name: str
    content_sha256: str | None
    is_delete: bool
    partition_month: str
    size_bytes: int | None = None
    uploaded_at: datetime | None = None
    file_mtime_ns: int | None = None  # the landed file's modification time when it was hashed


class Partition(NamedTuple):
    """A (tenant, month) partition."""

    tenant_id: str
    partition_month: str


@dataclass(frozen=True, slots=True)
class Document:
    """A document's row (`ingest.documents`)."""

    doc_id: str
    tenant_id: str
    doc_name: str
    upload_id: int
    partition_month: str
    content_sha256: str | None
    status: str
    chunk_count: int
    token_count: int
    updated_at: datetime
    extraction_attempts: int
    format: str | None = None  # what its text was extracted as (core.formats.DOCUMENT_FORMATS); None: not known


@dataclass(frozen=True, slots=True)
class LiveDocument:
    """A document that should have a file in the landing zone."""

    tenant_id: str
    doc_name: str
    partition_month: str
    upload_id: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """A chunk with everything an index item is built from (its sealed text and embedding)."""

    chunk_id: str
    doc_id: str
    sequence: int
    text_mac: bytes
    text_ciphertext: bytes
    embedding_ciphertext: bytes | None
    key_version: int
    seal_format: int
    state: str
    citation_ciphertext: bytes | None = None  # None: stored before citations were kept
    # Of the chunk's document, for the index item's filter fields (search filters evaluated inside the index).
    doc_name: str = ""
    partition_month: str = ""
    format: str | None = None  # None: not known (chunked before formats were recorded)


@dataclass(frozen=True, slots=True)
class ChunkToEmbed:
    """A chunk still without an embedding: its sealed text."""

    chunk_id: str
    text_mac: bytes
    text_ciphertext: bytes
    key_version: int
    seal_format: int
    token_count: int


@dataclass(frozen=True, slots=True)
class SealedEmbedding:
    """A chunk's sealed embedding, without its text."""

    chunk_id: str
    text_mac: bytes
    embedding_ciphertext: bytes | None
    key_version: int
    seal_format: int
    state: str


@dataclass(frozen=True, slots=True)
class SealedChunk:
    """A chunk's sealed text, citation and embedding and how they are sealed (what re-encryption reads)."""

    chunk_id: str
    text_mac: bytes
    text_ciphertext: bytes
    embedding_ciphertext: bytes | None
    key_version: int
    seal_format: int
    citation_ciphertext: bytes | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """A search hit's chunk: its sealed text and citation and its document's name."""

    chunk_id: str
    doc_id: str
    sequence: int
    text_mac: bytes
    text_ciphertext: bytes
    key_version: int
    seal_format: int
    doc_name: str
    citation_ciphertext: bytes | None = None


@dataclass(frozen=True, slots=True)
class ChunkId:
    """Only a chunk's id."""

    chunk_id: str


class ChunkWrite(NamedTuple):
    """A chunk to store (`Chunks.store`): the embedding is None, or one already computed for the same text; the
    citation sealed under the same key version as the text."""

    chunk_id: str
    sequence: int
    token_count: int
    text_mac: bytes
    text_ciphertext: bytes
    key_version: int
    embedding_ciphertext: bytes | None
    citation_ciphertext: bytes | None = None  # the sealed page and section (VectorEncryptor.encrypt_citation)


class EmbeddingWrite(NamedTuple):
    """A chunk's new sealed embedding (`Chunks.store_embeddings`), written only if the chunk still has this text."""

    embedding_ciphertext: bytes
    chunk_id: str
    text_mac: bytes


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """A quarantined document: `reason_code` is None if quarantined before codes were kept, `limits` the limits a
    limit refused it under (None when its content is at fault)."""

    doc_name: str
    reason: str
    reason_code: str | None
    limits: dict | None
    quarantined_at: datetime


@dataclass(frozen=True, slots=True)
class Released:
    """A document whose quarantine record was cleared."""

    doc_name: str
    reason_code: str | None
    limits: dict | None


@dataclass(frozen=True, slots=True)
class Erasure:
    """A tenant's tombstone: `completed_at` is None while the erasure is under way."""

    requested_at: datetime
    completed_at: datetime | None


class IndexGenerations(NamedTuple):
    """The live index generation, the one being rebuilt (or None) and the rebuild's resume cursor."""

    live: int
    rebuilding: int | None
    cursor: str | None


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """A tenant's counts: documents and chunks by state, and every embedding ever computed for it."""

    documents: int
    quarantined: int
    pending_documents: int
    chunks: int
    indexed: int
    embedded: int
    embeddings_computed: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A search-service API key's row (`ingest.api_keys`), never the key itself: `rate_per_s` None means the
    service's default rate; `revoked_reason` is 'revoked' or 'erased' (its tenant was erased) once revoked."""

    key_id: str
    tenant_id: str
    label: str | None
    rate_per_s: float | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
