"""Semantic search over one tenant's encrypted index, answered with decrypted chunk text and citations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from ingest_pipeline.core.crypto import VectorEncryptor
from ingest_pipeline.core.embedding import Embedder
from ingest_pipeline.stores.ledger import EmbeddingModelMismatch, Ledger
from ingest_pipeline.stores.tenant_index import TenantIndex


@dataclass(frozen=True)
class SearchHit:
    """One answer: the chunk, its score, its document's name (`source`), its decrypted text and citation (`page`
    and `section`, None when the document has none or the chunk was stored before citations were kept)."""

    doc_id: str
    chunk_id: str
    chunk_sequence: int
    score: float
    source: str
    text: str
    page: str | None = None
    section: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def search_tenant(
    *,
    tenant_id: str,
    queries: list[str],
    top_k: int,
    embedder: Embedder,
    index: TenantIndex | None,
    ledger: Ledger,
    encryptor_for: Callable[[int], VectorEncryptor],
    model_ids: tuple[str, ...],
) -> list[list[SearchHit]]:
    """For each query, the tenant's top_k chunks by cosine similarity (score = 1 - cosine distance).

    `model_ids` are the fingerprints of the query model (current and legacy); a tenant whose index was
    built by another model is refused, since its vectors and the queries' would not be comparable.
    """
    if index is None or not queries:
        return [[] for _ in queries]
    with ledger.connect() as conn:
        recorded = ledger.tenants.embedding_model(conn, tenant_id)
    if recorded is not None and recorded not in model_ids:
        raise EmbeddingModelMismatch(
            f"the index of tenant {tenant_id!r} was built with model {recorded}, this search would use "
            f"{model_ids[0]}: set INGEST_MODEL_PATH back (re-embedding with another model: not supported yet)"
        )
    neighbours = index.query(embedder.embed(queries), top_k=top_k)
    wanted = sorted({hit["id"] for hits in neighbours for hit in hits})
    with ledger.connect() as conn:
        rows = ledger.chunks.hits(conn, tenant_id, wanted) if wanted else {}
    answers = []
    for hits in neighbours:
        answer = []
        for hit in hits:
            row = rows.get(hit["id"])
            if row is None:  # indexed in CyborgDB but no longer in the ledger: never shown
                continue
            encryptor = encryptor_for(row.key_version)
            citation = encryptor.decrypt_citation(row.chunk_id, row.citation_ciphertext, row.text_mac,
                                                  row.seal_format)
            answer.append(SearchHit(
                doc_id=row.doc_id, chunk_id=row.chunk_id, chunk_sequence=row.sequence,
                score=round(1.0 - float(hit["distance"]), 6), source=row.doc_name,
                text=encryptor.decrypt_text(row.chunk_id, row.text_ciphertext, row.text_mac, row.seal_format),
                page=citation.page, section=citation.section,
            ))
        answers.append(answer)
    return answers
