"""The asset graph: raw_documents -> document_chunks -> chunk_embeddings -> cyborgdb_index.

Data moves through the PostgreSQL ledger, never through an IO manager, so no plaintext is pickled to
disk. Every asset is one (tenant, month) partition and is idempotent: a retried or repeated
materialization finds the work already done and changes nothing.
"""


import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    Backoff,
    Config,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from pydantic import Field

from ingest_pipeline.core.crypto import DecryptionError, MasterKeyError, VectorEncryptor
from ingest_pipeline.core.extraction import UnreadableDocument, extract_text
from ingest_pipeline.core.ids import chunk_id, validate_tenant
from ingest_pipeline.defs.partitions import MONTH_DIMENSION, TENANT_DIMENSION, tenant_month_partitions
from ingest_pipeline.defs.resources import (
    CyborgDB,
    EmbeddingModel,
    LandingZoneResource,
    PostgresLedger,
    TenantKeyring,
)
from ingest_pipeline.environment import ConfigurationError
from ingest_pipeline.indexing import IndexWriter
from ingest_pipeline.landing import LandingZoneUnavailable
from ingest_pipeline.ledger import EmbeddingModelMismatch, Ledger, TenantKeyMismatch, TenantSession, sha256_file
from ingest_pipeline.vector_index import IndexDimensionMismatch, IndexKeyMismatch

GROUP = "ingestion"
OWNERS = ["team:data-platform"]
# Transient failures (a dropped connection, a busy service) retry with exponential backoff and jitter;
# errors that retrying cannot fix raise Failure(allow_retries=False).
STORAGE_RETRY = RetryPolicy(max_retries=3, delay=1.0, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
# What every stage shares: one (tenant, month) partition, the group, the owners and the retry policy.
STAGE = {
    "partitions_def": tenant_month_partitions, "group_name": GROUP, "owners": OWNERS, "retry_policy": STORAGE_RETRY,
}


def tenant_and_month(context: AssetExecutionContext | AssetCheckExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return validate_tenant(keys[TENANT_DIMENSION]), keys[MONTH_DIMENSION]


def fail_fast(message: str) -> Failure:
    return Failure(description=message, allow_retries=False)


@contextmanager
def tenant_session(store: Ledger, keyring: TenantKeyring, tenant: str) -> Iterator[TenantSession]:
    """Be the tenant's one writer (a connection holding its lock), after proving the master key is the tenant's.

    A wrong, unreadable or missing master key fails the run before anything is written, without retries.
    """
    try:
        key_check = keyring.tenant_keys(tenant).key_check
    except (MasterKeyError, PermissionError, ConfigurationError) as exc:
        raise fail_fast(str(exc)) from None
    with store.tenant_writer(tenant) as session:
        try:
            store.verify_tenant_key(session.conn, tenant, key_check)
        except TenantKeyMismatch as exc:
            raise fail_fast(str(exc)) from None
        yield session


class RawDocumentsConfig(Config):
    allow_mass_delete: bool = Field(
        default=False, description="Confirm that files missing from the landing zone were removed on purpose."
    )
    max_removed_share: float = Field(
        default=0.5, description="Largest share of a partition's documents that may vanish from the landing zone "
        "in one run without allow_mass_delete.",
    )


@asset(kinds={"postgres"}, **STAGE)
def raw_documents(
    context: AssetExecutionContext, config: RawDocumentsConfig, ledger: PostgresLedger,
    landing: LandingZoneResource, keyring: TenantKeyring,
) -> MaterializeResult:
    """Uploaded documents of one tenant and month, reconciled with the ledger by content hash.

    Each document whose latest upload falls in this partition is classified as new, changed,
    unchanged or deleted (an explicit delete, or its file removed from the landing zone). New and
    changed documents are registered for chunking; a deleted one is tombstoned and its chunks are
    marked stale for removal from the index. Unchanged documents are left alone.

    A removal counts only while the landing zone is demonstrably healthy: a missing or unreadable
    landing zone or tenant folder fails the run and deletes nothing, and so does a partition that
    would lose more than `max_removed_share` of its documents at once, unless `allow_mass_delete`.
    """
    tenant, month = tenant_and_month(context)
    counts: Counter[str] = Counter()
    store = ledger.ledger
    started = time.perf_counter()
    with tenant_session(store, keyring, tenant) as session:
        conn = session.conn
        uploads = store.partition_uploads(conn, tenant, month)
        documents = {upload.doc_id: store.document(conn, upload.doc_id) for upload in uploads}

        def already_deleted(upload) -> bool:  # by an earlier run that found its file gone
            document = documents[upload.doc_id]
            return document is not None and document["status"] == "deleted" and \
                document["upload_id"] == upload.upload_id

        wanted = [upload for upload in uploads if not upload.is_delete and not already_deleted(upload)]
        present: set[str] = set()
        if wanted:
            try:
                present = landing.zone.tenant_files(tenant)
            except LandingZoneUnavailable as exc:
                raise fail_fast(f"tenant {tenant} month {month}: {exc}") from None
        vanished = [upload.doc_name for upload in wanted if upload.doc_name not in present]
        if vanished and len(vanished) > config.max_removed_share * len(wanted) and not config.allow_mass_delete:
            raise Failure(
                description=(
                    f"tenant {tenant} month {month}: {len(vanished)} of {len(wanted)} documents are missing from "
                    f"the landing zone, more than max_removed_share={config.max_removed_share:.0%} at once; nothing "
                    f"was deleted. If they were removed on purpose, run `ingest-pipeline ingest --tenant {tenant} "
                    "--allow-mass-delete` (run config ops.raw_documents.config.allow_mass_delete: true), or delete "
                    f"them explicitly with `ingest-pipeline upload --tenant {tenant} --delete NAME...`"
                ),
                metadata={"documents_missing": len(vanished), "documents_in_partition": len(wanted),
                          "missing_documents": MetadataValue.json(sorted(vanished)[:50])},
                allow_retries=False,
            )
        for upload in uploads:
            document = documents[upload.doc_id]
            with conn.transaction():
                if upload.is_delete or upload.doc_name not in present:
                    removed = not upload.is_delete
                    if removed:
                        # The removal becomes the document's latest upload event, so the same file put back
                        # later is a new upload (never "unchanged"), whoever puts it back.
                        upload = store.record_removal(conn, upload)
                    if document is not None and document["status"] != "deleted":
                        store.delete_document(conn, upload)
                        counts["deleted"] += 1
                        counts["removed_from_landing" if removed else "deleted_explicitly"] += 1
                    else:
                        store.tombstone(conn, upload)
                    continue
                content_sha256 = sha256_file(landing.zone.path(tenant, upload.doc_name))
                if document is None or document["status"] == "deleted":
                    store.register_document(conn, upload, content_sha256)
                    counts["new"] += 1
                elif document["content_sha256"] != content_sha256:
                    store.register_document(conn, upload, content_sha256)
                    counts["changed"] += 1
                else:
                    store.touch_document(conn, upload)
                    counts["pending" if document["status"] == "registered" else "unchanged"] += 1
    context.log.info(f"tenant {tenant} month {month}: {dict(counts) or 'no uploads'}")
    return MaterializeResult(
        metadata={
            "documents_new": counts["new"],
            "documents_changed": counts["changed"],
            "documents_unchanged": counts["unchanged"],
            "documents_deleted": counts["deleted"],
            "documents_removed_from_landing_zone": counts["removed_from_landing"],
            "documents_pending_from_earlier_run": counts["pending"],
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


@asset(deps=[raw_documents], kinds={"python", "postgres"}, **STAGE)
def document_chunks(
    context: AssetExecutionContext,
    ledger: PostgresLedger,
    landing: LandingZoneResource,
    embedding_model: EmbeddingModel,
    keyring: TenantKeyring,
) -> MaterializeResult:
    """Registered documents extracted to text and split into token-bounded chunks, stored encrypted.

    Chunks are cut at headings, paragraphs and sentences with the embedding model's own tokenizer,
    so none exceeds the model's window. Chunk ids are uuid5(NAMESPACE_DNS, "{doc_id}_{sequence}");
    text is sealed with the tenant's AES-256-GCM data key. A chunk whose text is unchanged keeps its
    embedding; chunks beyond a shortened document's end are marked stale. A document that cannot be
    read is quarantined with its reason, and the rest of the partition carries on.
    """
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    encryptor = keyring.encryptor(tenant)
    counts: Counter[str] = Counter()
    max_tokens = 0
    quarantined: list[str] = []
    started = time.perf_counter()
    with tenant_session(store, keyring, tenant) as session:
        conn = session.conn
        for document in store.documents_to_chunk(tenant, month):
            name = document["doc_name"]
            path = landing.zone.path(tenant, name)
            try:
                size = path.stat().st_size
                # An oversized file is refused before it is read into memory.
                data = path.read_bytes() if size <= landing.max_document_bytes else None
            except FileNotFoundError:
                context.log.warning(f"{name}: removed from the landing zone since registration; skipped")
                counts["missing"] += 1
                continue
            content_sha256 = document["content_sha256"] if data is None else hashlib.sha256(data).hexdigest()
            try:
                if data is None:
                    limit = landing.max_document_bytes
                    raise UnreadableDocument(name, f"too large: {size} bytes, the limit is {limit}")
                extracted = extract_text(name, data, landing.max_document_bytes)
                # The tokenizer is loaded on the first document there is to chunk, not before.
                chunks = embedding_model.chunker.split(extracted.text, extracted.format)
                if not chunks:
                    raise UnreadableDocument(name, "no text left after chunking")
            except UnreadableDocument as exc:
                reason = exc.reason
            except Exception as exc:  # a parser bug must not stop the other documents
                reason = f"unreadable ({type(exc).__name__})"
            else:
                reason = None
            if reason is not None:
                with conn.transaction():
                    store.quarantine_document(conn, document, content_sha256, reason)
                context.log.warning(f"quarantined {name}: {reason}")
                quarantined.append(name)
                continue
            doc_id = str(document["doc_id"])
            rows = []
            for chunk in chunks:
                cid = chunk_id(doc_id, chunk.sequence)
                rows.append((cid, chunk.sequence, chunk.token_count, encryptor.text_mac(chunk.text),
                             encryptor.encrypt_text(cid, chunk.text), encryptor.key_version))
                max_tokens = max(max_tokens, chunk.token_count)
            with conn.transaction():
                store.store_chunks(conn, document, content_sha256, rows)
            counts["documents"] += 1
            counts["chunks"] += len(rows)
            counts["tokens"] += sum(row[2] for row in rows)
    return MaterializeResult(
        metadata={
            "documents_chunked": counts["documents"],
            "documents_quarantined": len(quarantined),
            "quarantined_documents": MetadataValue.json(quarantined),
            "documents_missing": counts["missing"],
            "chunks": counts["chunks"],
            "tokens": counts["tokens"],
            "max_tokens_per_chunk": max_tokens,
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


@asset(deps=[document_chunks], kinds={"pytorch", "postgres"}, **STAGE)
def chunk_embeddings(
    context: AssetExecutionContext,
    ledger: PostgresLedger,
    embedding_model: EmbeddingModel,
    keyring: TenantKeyring,
) -> MaterializeResult:
    """Embeddings of new or changed chunks, sealed with AES-256-GCM into the Postgres cold copy.

    Chunks are embedded in batches (32 by default) by a model loaded once per process. Each fetch of
    32 batches is sorted by text length, so batches pad little, and committed 8 batches at a time, so
    a retry resumes where the failure struck and never embeds a chunk twice. Unchanged chunks are not
    embedded again.
    """
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    batch_size = embedding_model.batch_size
    encryptors: dict[int, VectorEncryptor] = {}
    fetch, commit_every = batch_size * 32, batch_size * 8
    embedded = batches = 0
    embed_seconds = 0.0
    seen: set[str] = set()
    started = time.perf_counter()
    with tenant_session(store, keyring, tenant) as session:
        conn = session.conn
        if not store.chunks_in_state(conn, tenant, month, "chunked", limit=1):
            # Nothing to embed: finish without fingerprinting or loading the model.
            duration = round(time.perf_counter() - started, 3)
            return MaterializeResult(metadata={"chunks_embedded": 0, "duration_s": duration})
        try:
            store.verify_embedding_model(conn, tenant, embedding_model.model_id, embedding_model.legacy_model_id)
        except EmbeddingModelMismatch as exc:
            raise fail_fast(str(exc)) from None
        embedder = embedding_model.embedder
        while rows := store.chunks_in_state(conn, tenant, month, "chunked", limit=fetch):
            if seen.intersection(row["chunk_id"] for row in rows):
                raise RuntimeError(f"chunks of tenant {tenant} did not leave the 'chunked' state; retrying")
            seen.update(row["chunk_id"] for row in rows)
            texts = {}
            for row in rows:
                encryptor = encryptors.setdefault(row["key_version"], keyring.encryptor(tenant, row["key_version"]))
                try:
                    texts[row["chunk_id"]] = encryptor.decrypt_text(
                        row["chunk_id"], row["text_ciphertext"], row["text_mac"], row["seal_format"])
                except DecryptionError as exc:
                    raise fail_fast(f"{exc} (is INGEST_MASTER_KEY the key the data was written with?)") from None
            rows.sort(key=lambda row: len(texts[row["chunk_id"]]))
            for start in range(0, len(rows), commit_every):
                group = rows[start:start + commit_every]
                tick = time.perf_counter()
                vectors = embedder.embed([texts[row["chunk_id"]] for row in group])
                embed_seconds += time.perf_counter() - tick
                sealed = [
                    (encryptors[row["key_version"]].encrypt_vector(
                        row["chunk_id"], vector, row["text_mac"], row["seal_format"]),
                     row["chunk_id"], row["text_mac"])
                    for row, vector in zip(group, vectors, strict=True)
                ]
                with conn.transaction():
                    store.store_embeddings(conn, tenant, sealed)
                batches += -(-len(group) // embedder.batch_size)
            embedded += len(rows)
            context.log.info(f"tenant {tenant} month {month}: {embedded} chunks embedded")
    rate = embedded / embed_seconds if embed_seconds else 0.0
    return MaterializeResult(
        metadata={
            "chunks_embedded": embedded,
            "batches": batches,
            "batch_size": embedder.batch_size,
            "embedding_seconds": round(embed_seconds, 3),
            "chunks_per_second": round(rate, 1),
            "dimension": embedder.dimension,
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


class IndexConfig(Config):
    upsert_batch_size: int = 32


@asset(deps=[chunk_embeddings], kinds={"cyborgdb", "postgres"}, **STAGE)
def cyborgdb_index(
    context: AssetExecutionContext,
    config: IndexConfig,
    ledger: PostgresLedger,
    cyborgdb: CyborgDB,
    keyring: TenantKeyring,
) -> MaterializeResult:
    """The tenant's encrypted CyborgDB index, brought up to date from the Postgres cold copy.

    Stale chunks (of changed, deleted or quarantined documents) are deleted from the index first,
    then embedded chunks are upserted in batches as {id, vector, metadata, contents}; each batch is
    marked indexed in the same transaction that locked its rows, so a failed upsert rolls the batch
    back and the step retries. CyborgDB encrypts vectors with the tenant's own index key; contents
    are the chunk's AES-GCM ciphertext. One writer per tenant index at a time.
    """
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    started = time.perf_counter()
    with tenant_session(store, keyring, tenant) as session:
        writer = IndexWriter(store, cyborgdb.indexes, keyring, session, config.upsert_batch_size)
        try:
            removed = writer.remove_stale(month)
            upserted, batches = writer.upsert_embedded(month)
        except (DecryptionError, IndexDimensionMismatch, IndexKeyMismatch) as exc:
            raise fail_fast(str(exc)) from None
        index_vectors = writer.count()
    return MaterializeResult(
        metadata={
            "chunks_upserted": upserted,
            "chunks_removed": removed,
            "upsert_batches": batches,
            "index_vectors": index_vectors,
            "backend": cyborgdb.indexes.backend,
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )
