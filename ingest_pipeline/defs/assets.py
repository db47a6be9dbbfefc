"""The asset graph: raw_documents -> document_chunks -> chunk_embeddings -> cyborgdb_index.

Data moves through the PostgreSQL ledger, never through an IO manager, so no plaintext is pickled to
disk. Every asset is one (tenant, month) partition and is idempotent: a retried or repeated
materialization finds the work already done and changes nothing.
"""


import resource
import time
from collections import Counter

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ingest_pipeline.core.crypto import Citation, DecryptionError
from ingest_pipeline.core.extraction import ReasonCode, UnreadableDocument
from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.core.ids import chunk_id
from ingest_pipeline.core.sandbox import ChunkingSpec, ExtractionUnavailable, OcrUnavailableError, WorkerStartFailed
from ingest_pipeline.defs.partitions import tenant_month_partitions
from ingest_pipeline.defs.resources import (
    CyborgDB,
    EmbeddingModel,
    LandingZoneResource,
    PostgresLedger,
    TenantKeyring,
)
from ingest_pipeline.defs.shared import GROUP, STORAGE_RETRY, fail_fast, tenant_and_month, tenant_session
from ingest_pipeline.stores.landing_zone import LandingZoneUnavailable, RefusedFile, hash_file
from ingest_pipeline.stores.ledger import (
    ChunkWrite,
    EmbeddingModelMismatch,
    SealedEmbedding,
)
from ingest_pipeline.stores.tenant_index import LAYOUT_FULL_TEXT, PermanentIndexError
from ingest_pipeline.work.embedding_stage import embed_pending
from ingest_pipeline.work.indexing import IndexWriter
from ingest_pipeline.work.landing_scan import scan_changes
from ingest_pipeline.work.uploads import note_unchanged_file

OWNERS = ["team:data-platform"]
# What every stage shares: one (tenant, month) partition, the group, the owners and the retry policy.
STAGE = {
    "partitions_def": tenant_month_partitions, "group_name": GROUP, "owners": OWNERS, "retry_policy": STORAGE_RETRY,
}


def _own_peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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
    marked stale for removal from the index. Unchanged documents are left alone. A file is hashed only when
    its size or modification time differs from those recorded with its upload (`files_hashed`); a file that
    became a symbolic link or a FIFO since the folder was listed is skipped, never read (`files_refused`).

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
        uploads = store.uploads.in_partition(conn, tenant, month)
        found = store.documents.by_id(conn, [upload.doc_id for upload in uploads])
        documents = {upload.doc_id: found.get(upload.doc_id) for upload in uploads}

        def already_deleted(upload) -> bool:  # by an earlier run that found its file gone
            document = documents[upload.doc_id]
            return document is not None and document.status == "deleted" and \
                document.upload_id == upload.upload_id

        wanted = [upload for upload in uploads if not upload.is_delete and not already_deleted(upload)]
        present: set[str] = set()
        changed: dict = {}
        vanished: list[str] = []
        if wanted:
            try:
                changes = scan_changes(landing.zone, tenant, {upload.doc_name: upload for upload in wanted},
                                       [upload.doc_name for upload in wanted])
            except LandingZoneUnavailable as exc:
                raise fail_fast(f"tenant {tenant} month {month}: {exc}") from None
            present, changed, vanished = changes.present, changes.changed, changes.missing
            fault_point("landing:after-scan")  # test-only seam: a file swapped for a link or a FIFO meanwhile
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
                        upload = store.uploads.record_removal(conn, upload)
                    if document is not None and document.status != "deleted":
                        store.documents.delete(conn, upload)
                        counts["deleted"] += 1
                        counts["removed_from_landing" if removed else "deleted_explicitly"] += 1
                    else:
                        store.documents.tombstone(conn, upload)
                    continue
                if upload.doc_name in present and upload.doc_name not in changed and upload.content_sha256:
                    content_sha256 = upload.content_sha256  # the file as it was hashed when recorded
                else:
                    try:
                        info, content_sha256 = hash_file(landing.zone.path(tenant, upload.doc_name), upload.doc_name)
                    except RefusedFile as exc:  # a link or a FIFO swapped in since the folder was listed
                        context.log.warning(f"{exc} [{exc.code}]; skipped")
                        counts["refused"] += 1
                        continue
                    counts["hashed"] += 1
                    if content_sha256 == upload.content_sha256 and not upload.is_delete:
                        note_unchanged_file(store, conn, upload, info)  # not hashed again
                if document is None or document.status == "deleted":
                    store.documents.register(conn, upload, content_sha256)
                    counts["new"] += 1
                elif document.content_sha256 != content_sha256:
                    store.documents.register(conn, upload, content_sha256)
                    counts["changed"] += 1
                else:
                    store.documents.touch(conn, upload)
                    counts["pending" if document.status == "registered" else "unchanged"] += 1
    context.log.info(f"tenant {tenant} month {month}: {dict(counts) or 'no uploads'}")
    return MaterializeResult(
        metadata={
            "documents_new": counts["new"],
            "documents_changed": counts["changed"],
            "documents_unchanged": counts["unchanged"],
            "documents_deleted": counts["deleted"],
            "documents_removed_from_landing_zone": counts["removed_from_landing"],
            "documents_pending_from_earlier_run": counts["pending"],
            "files_hashed": counts["hashed"],
            "files_refused": counts["refused"],
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


# A document whose extraction ends this many times in a row with its worker killed from outside (never a limit
# of ours) is quarantined as crashed, so that it cannot hold its partition back for ever.
MAX_EXTRACTIONS_WITHOUT_VERDICT = 3


def _steps_share_this_process(context: AssetExecutionContext) -> bool:
    """Whether the run's next steps run in this process (the in-process executor): only then is a model loaded
    here of use to the embedding step. The multiprocess executor gives each step a process that exits after it."""
    execution = context.get_step_execution_context().resolved_run_config.execution.execution_engine_config
    # {"config": {"in_process": {...}}} or {"config": {"multiprocess": {...}}} (multi_or_in_process_executor)
    chosen = execution.get("config", execution)
    return "multiprocess" not in (chosen if isinstance(chosen, dict) else {})


def _reused_embedding(keys, encryptor, existing: SealedEmbedding | None, new_chunk_id: str,
                      text_mac: bytes) -> bytes | None:
    """The embedding the document already holds for the same text under another chunk id (a chunk that moved,
    say, after a paragraph was inserted before it), sealed again for `new_chunk_id`; None when there is none."""
    if existing is None:
        return None
    vector = keys.encryptor(existing.key_version).decrypt_vector(
        existing.chunk_id, existing.embedding_ciphertext, text_mac, existing.seal_format)
    return encryptor.encrypt_vector(new_chunk_id, vector, text_mac)


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
    text and citation are sealed with the tenant's AES-256-GCM data key. A chunk whose text is unchanged keeps its
    embedding, and one whose text moved to another position (a paragraph inserted before it) takes the
    embedding of that text with it, so only new text is embedded; chunks beyond a shortened document's end
    are marked stale. A document that cannot be read is quarantined with its reason and reason code, and the
    rest of the partition carries on.

    Each file is read (never through a symbolic link), extracted and chunked in a worker process bounded in
    memory and time (LandingZoneResource.extraction_memory_mb, extraction_timeout_s; two such workers side by
    side by default, extraction_workers): a PDF bomb, a 50 MB line or markup nested 100,000 deep is
    quarantined as memory-limit or time-limit, never takes the step down. The metadata lists the quarantined
    documents with their codes, a count per code, the documents chunked per format (`documents_by_format`), the
    pages read by OCR (`pages_ocred`), and the peak memory of the workers and of the step's own process. Each
    chunk's citation (its page and section path) is sealed like its text, never put in metadata or logs.

    A document refused by a limit rather than its content is quarantined with the limits it failed under, and
    tried again by the first run whose limit is larger. One the sandbox could not judge (a worker that did not
    start or was killed from outside, a broken pipe) is no verdict on it: it stays registered, the others are
    stored, and the step fails at the end (retried by its retry policy, else by the next run), listing it.
    """
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    counts: Counter[str] = Counter()
    max_tokens = 0
    quarantined: list[dict[str, str]] = []
    by_format: Counter[str] = Counter()  # documents chunked, per format name (never a document's name)
    retryable: list[dict[str, str]] = []  # not judged (an infrastructure failure): left registered, tried again
    started = time.perf_counter()
    step_rss_at_start = _own_peak_rss_mb()
    # The worker, and the tokenizer in it, start at the first document there is to chunk, not before.
    # The workers, and the tokenizer in them, start at the first document there is to chunk, not before.
    sandbox = landing.sandbox_pool(ChunkingSpec.for_model(embedding_model.resolved_path))
    with tenant_session(store, keyring, tenant) as session, sandbox:
        conn = session.conn
        encryptor = session.keys.encryptor()
        folder = landing.zone.tenant_folder(tenant)
        documents = store.documents.to_chunk(tenant, month, sandbox.limits.as_dict())
        model_preloaded = bool(documents) and _steps_share_this_process(context)
        if model_preloaded:
            # The next stage will need the model: load it meanwhile (the workers chunk in their own processes).
            embedding_model.preload()
        for document, extraction in sandbox.map(folder, documents, lambda document: document.doc_name):
            name = document.doc_name
            content_sha256 = document.content_sha256
            try:
                extracted = extraction.result()
                content_sha256 = extracted.content_sha256
                chunks = extracted.chunks
                if not chunks:
                    raise UnreadableDocument(name, "no text left after chunking", ReasonCode.NO_TEXT)
            except FileNotFoundError:
                context.log.warning(f"{name}: removed from the landing zone since registration; skipped")
                counts["missing"] += 1
                continue
            except WorkerStartFailed as exc:  # the machine's fault: the document stays registered
                context.log.warning(f"{name}: not extracted, tried again later: {exc}")
                retryable.append({"document": name, "cause": str(exc)})
                break  # no worker starts: the documents after this one would fail the same way
            except OcrUnavailableError as exc:  # this machine cannot OCR: the document stays registered, uncounted
                context.log.warning(f"{name}: not extracted, tried again later: {exc}")
                retryable.append({"document": name, "cause": str(exc)})
                continue
            except ExtractionUnavailable as exc:  # no verdict on the document: it stays registered, a few times
                with conn.transaction():
                    attempts = store.documents.count_extraction_without_verdict(conn, str(document.doc_id))
                if attempts < MAX_EXTRACTIONS_WITHOUT_VERDICT:
                    context.log.warning(f"{name}: not extracted, tried again later: {exc}")
                    retryable.append({"document": name, "cause": str(exc)})
                    continue
                # Killed while reading it every time: most likely the host's memory, so under the memory limit.
                reason, code = (f"{exc} ({attempts} times in a row)", ReasonCode.CRASHED)
                limits = sandbox.limits.refusal_limits(code)
            except UnreadableDocument as exc:
                reason, code, limits = exc.reason, exc.code, exc.limits
                content_sha256 = exc.content_sha256 or content_sha256
            except Exception as exc:  # a bug must not stop the other documents; its message may quote them
                reason, code, limits = f"unreadable ({type(exc).__name__})", ReasonCode.PARSER_ERROR, None
            else:
                reason = code = limits = None
            if reason is not None:
                with conn.transaction():
                    store.quarantine.add(conn, document, content_sha256, reason, code, limits)
                under = f" (under {', '.join(f'{k}={v}' for k, v in limits.items())})" if limits else ""
                context.log.warning(f"quarantined {name} [{code}]{under}: {reason}")
                quarantined.append({"document": name, "code": str(code), **({"limits": limits} if limits else {})})
                continue
            doc_id = str(document.doc_id)
            embedded = store.chunks.embeddings_of(conn, doc_id)
            mac_of = {row.chunk_id: bytes(row.text_mac) for row in embedded}
            by_mac = {bytes(row.text_mac): row for row in embedded}
            rows = []
            for chunk in chunks:
                cid, mac = chunk_id(doc_id, chunk.sequence), encryptor.text_mac(chunk.text)
                embedding = None if mac_of.get(cid) == mac else _reused_embedding(
                    session.keys, encryptor, by_mac.get(mac), cid, mac)
                counts["embeddings_reused"] += embedding is not None
                citation = encryptor.encrypt_citation(cid, Citation(chunk.page, chunk.section), mac)
                rows.append(ChunkWrite(cid, chunk.sequence, chunk.token_count, mac,
                                       encryptor.encrypt_text(cid, chunk.text), encryptor.key_version, embedding,
                                       citation))
                max_tokens = max(max_tokens, chunk.token_count)
            with conn.transaction():
                store.chunks.store(conn, document, content_sha256, rows, doc_format=extracted.format)
            counts["documents"] += 1
            by_format[extracted.format] += 1
            counts["pages_ocred"] += extracted.pages_ocred
            counts["chunks"] += len(rows)
            counts["tokens"] += sum(row.token_count for row in rows)
    if retryable:
        raise Failure(
            description=(
                f"tenant {tenant} month {month}: {len(retryable)} document(s) could not be extracted for a reason "
                f"that is not theirs ({retryable[0]['cause']}); they stay pending and are tried again (this "
                f"step's retries, then the next run). {counts['documents']} chunked, {len(quarantined)} "
                "quarantined meanwhile."
            ),
            metadata={"documents_retryable": len(retryable), "retryable_documents": MetadataValue.json(retryable),
                      "documents_chunked": counts["documents"], "documents_quarantined": len(quarantined)},
        )
    return MaterializeResult(
        metadata={
            "documents_chunked": counts["documents"],
            "documents_quarantined": len(quarantined),
            "quarantined_documents": MetadataValue.json(quarantined),
            "quarantined_by_code": MetadataValue.json(dict(sorted(Counter(q["code"] for q in quarantined).items()))),
            "documents_by_format": MetadataValue.json(dict(sorted(by_format.items()))),
            "pages_ocred": counts["pages_ocred"],
            "documents_missing": counts["missing"],
            "chunks": counts["chunks"],
            "embeddings_reused": counts["embeddings_reused"],
            "model_preloaded": model_preloaded,
            "tokens": counts["tokens"],
            "max_tokens_per_chunk": max_tokens,
            # Peak resident memory: of the extraction workers, and of the step's own process (its high-water
            # mark over the process's life, and how much this step raised it).
            "extraction_peak_rss_mb": round(sandbox.peak_rss_bytes / 2**20, 1),
            "extraction_workers": len(sandbox.sandboxes),
            "extraction_workers_started": sandbox.workers_started,
            "step_peak_rss_mb": _own_peak_rss_mb(),
            "step_peak_rss_growth_mb": round(_own_peak_rss_mb() - step_rss_at_start, 1),
            "extraction_memory_limit_mb": sandbox.limits.memory_bytes // 2**20,
            "extraction_timeout_s": sandbox.limits.timeout_s,
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

    Chunks are embedded in batches (32 by default) by a model loaded once per process, in a bounded
    pipeline (`embedding_stage.py`): while the model encodes a group of 256 chunks, one thread fetches and
    decrypts the next (sorted by token count and batched in that order, so batches pad little) and another
    seals and commits the last, so the model never waits for Postgres or encryption. Each group commits on
    its own, so a retry resumes where the failure struck and never embeds a chunk twice. Unchanged chunks
    are not embedded again.
    """
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    batch_size = embedding_model.batch_size
    started = time.perf_counter()
    with tenant_session(store, keyring, tenant) as session:
        conn = session.conn
        if not store.chunks.in_state(conn, tenant, month, "chunked", limit=1):
            # Nothing to embed: finish without fingerprinting or loading the model.
            duration = round(time.perf_counter() - started, 3)
            return MaterializeResult(metadata={"chunks_embedded": 0, "duration_s": duration})
        try:
            store.tenants.verify_embedding_model(conn, tenant, embedding_model.model_id,
                                                 embedding_model.legacy_model_id)
        except EmbeddingModelMismatch as exc:
            raise fail_fast(str(exc)) from None
        embedder = embedding_model.embedder
        reported = [0]

        def progress(embedded: int) -> None:
            if embedded - reported[0] >= 1024:
                reported[0] = embedded
                context.log.info(f"tenant {tenant} month {month}: {embedded} chunks embedded")

        try:
            stats = embed_pending(store, session, embedder, month, fetch=batch_size * 32,
                                  commit_every=batch_size * 8, on_progress=progress)
        except DecryptionError as exc:
            raise fail_fast(f"{exc} (is INGEST_MASTER_KEY the key the data was written with?)") from None
    rate = stats.embedded / stats.embed_seconds if stats.embed_seconds else 0.0
    duration = time.perf_counter() - started
    return MaterializeResult(
        metadata={
            "chunks_embedded": stats.embedded,
            "batches": stats.batches,
            "batch_size": embedder.batch_size,
            "embedding_seconds": round(stats.embed_seconds, 3),
            "chunks_per_second": round(rate, 1),
            "model_busy_share": round(stats.embed_seconds / duration, 3) if duration else 0.0,
            "model_waited_for_input_s": round(stats.model_waited_seconds, 3),
            "model_waited_for_writer_s": round(stats.writer_backlog_seconds, 3),
            "dimension": embedder.dimension,
            "duration_s": round(duration, 3),
        }
    )


class IndexConfig(Config):
    upsert_batch_size: int = 32
    train_at_vectors: int = Field(
        default=50_000, description="Train an embedded index (IVF clustering) once it holds this many vectors; "
        "cyborgdb-service trains its indexes by itself.",
    )


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
    are the chunk's AES-GCM ciphertext. One writer per tenant index at a time. An embedded index is
    trained (IVF clustering, so queries probe a few clusters) the first time it reaches
    `train_at_vectors` vectors, typically at the end of a large backfill; the check
    `sample_recall_at_10` shows it still finds what exact search finds.
    """
    tenant, month = tenant_and_month(context)
    store = ledger.ledger
    started = time.perf_counter()
    with tenant_session(store, keyring, tenant) as session:
        writer = IndexWriter(store, cyborgdb.indexes, keyring, session, config.upsert_batch_size)
        try:
            removed = writer.remove_stale(month)
            upserted, batches = writer.upsert_embedded(month)
            index_vectors = writer.count()
            layout = writer.live_layout()
            trained_now = writer.train_if_due(config.train_at_vectors, index_vectors)
        except (DecryptionError, PermanentIndexError) as exc:
            # A wrong index key, a dimension mismatch or refused credentials: retrying cannot help, and the
            # batch that met it stays 'embedded' in Postgres (its transaction rolled back).
            raise fail_fast(str(exc)) from None
    fault_point("index:after-commit")  # test-only seam: all committed, before Dagster records success
    return MaterializeResult(
        metadata={
            "chunks_upserted": upserted,
            "chunks_removed": removed,
            "upsert_batches": batches,
            "index_vectors": index_vectors,
            "index_trained_now": trained_now,
            # For the asset checks: a random sample of the ids this run upserted and removed (at most 128 each).
            "upserted_ids_sample": MetadataValue.json(writer.upserted.ids),
            "removed_ids_sample": MetadataValue.json(writer.removed.ids),
            "backend": cyborgdb.indexes.backend,
            # 2: the chunk text is in the index as a full-text field (hybrid and keyword search); 1: an index
            # built before it, searched by vector only until `reconcile` (or a rebuild) moves it.
            "index_layout": layout,
            "search_modes": "hybrid, vector, keyword" if layout >= LAYOUT_FULL_TEXT else "vector only",
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )
