"""Search over one tenant's encrypted index, answered with decrypted chunk text and citations.

Three modes, all ranked inside CyborgDB's encrypted index: `vector` (cosine similarity of the query's
embedding), `keyword` (BM25 over each chunk's text, held in the index as a full-text field) and `hybrid`
(both rankings fused by weighted reciprocal-rank fusion; `alpha` 0 = BM25 only, 1 = vectors only). An index
created before the full-text field (layout 1) answers by vector only, and says so in the answer's warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ingest_pipeline.core.crypto import VectorEncryptor
from ingest_pipeline.core.embedding import Embedder
from ingest_pipeline.core.formats import DOCUMENT_FORMATS
from ingest_pipeline.stores.ledger import EmbeddingModelMismatch, Ledger
from ingest_pipeline.stores.tenant_index import LAYOUT_VECTOR_ONLY, TenantIndex

log = logging.getLogger(__name__)

MODES = ("hybrid", "vector", "keyword")
DEFAULT_MODE = "hybrid"
# Weights the vector leg (1 - alpha the BM25 leg). Chosen by answer-in-top-5 on two QA sets (`make recall`,
# README "Search"): on SQuAD 0.2 to 0.5 tie (0.971, vector alone 0.922), on the sample corpus set 0.35 is best.
DEFAULT_ALPHA = 0.35
SCORE_KINDS = {"vector": "cosine", "hybrid": "fused_rank", "keyword": "bm25"}
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class InvalidSearchOption(ValueError):
    """A search option or filter that search does not accept; `field` names it ("mode", "alpha", "top_k" or
    "filters.<name>"), the message says why (never quoting a query)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SearchFilters:
    """What hits must match, evaluated inside the encrypted index (on each item's metadata): the document's
    exact `name`, a folder `name_prefix` (ending in "/"), the upload month from `month_from` to `month_to`
    ("YYYY-MM", inclusive), the document's `format` (one of DOCUMENT_FORMATS: what its text was extracted as).
    A document chunked before formats were recorded has no known format and matches no `format` filter."""

    name: str | None = None
    name_prefix: str | None = None
    month_from: str | None = None
    month_to: str | None = None
    format: str | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    def to_cyborgdb(self) -> dict | None:
        """The CyborgDB metadata filter (MongoDB-style), or None for no filter; InvalidSearchOption names a bad
        field."""
        clauses: list[dict] = []
        if self.name is not None:
            if not self.name:
                raise InvalidSearchOption("filters.name", "search filter 'name' is empty")
            clauses.append({"doc_name": self.name})
        if self.name_prefix is not None:
            if not self.name_prefix.endswith("/") or self.name_prefix.strip("/") == "":
                raise InvalidSearchOption("filters.name_prefix", "search filter 'name_prefix' must be a folder "
                                          f"ending in '/', got {self.name_prefix!r}")
            clauses.append({"name_prefixes": {"$in": [self.name_prefix]}})
        for name, operator in (("month_from", "$gte"), ("month_to", "$lte")):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str) or not _MONTH.match(value):
                raise InvalidSearchOption(f"filters.{name}",
                                          f"search filter {name!r} must be a month YYYY-MM, got {value!r}")
            clauses.append({"month_key": {operator: int(value.replace("-", ""))}})
        if self.month_from and self.month_to and self.month_from > self.month_to:
            raise InvalidSearchOption("filters.month_to",
                                      f"search filter: month_from {self.month_from} is after month_to {self.month_to}")
        if self.format is not None:
            if self.format not in DOCUMENT_FORMATS:
                raise InvalidSearchOption("filters.format", "search filter 'format' must be one of "
                                          f"{', '.join(DOCUMENT_FORMATS)}")
            clauses.append({"format": self.format})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def check_search_options(mode: str, alpha: float | None, top_k: int) -> None:
    """InvalidSearchOption naming the option when the mode, alpha or top_k is not one search accepts."""
    if mode not in MODES:
        raise InvalidSearchOption("mode", f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    if alpha is not None:
        if mode != "hybrid":
            raise InvalidSearchOption("alpha", f"alpha weights the two legs of a hybrid search; mode {mode!r} has one")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
            raise InvalidSearchOption("alpha",
                                      f"alpha must be a number from 0 (keyword only) to 1 (vector only), got {alpha!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidSearchOption("top_k", f"top_k must be a positive integer, got {top_k!r}")


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
    score_kind: str = "cosine"  # what `score` is: "cosine" similarity, "fused_rank" (RRF) or "bm25"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchAnswers:
    """The hits for each query, the mode that ranked them, and why it is not the mode asked for (`warning`:
    an index without the full-text field answers by vector only)."""

    hits: list[list[SearchHit]]
    mode: str
    requested_mode: str
    alpha: float | None = None
    warning: str | None = None
    score_kind: str = field(init=False)

    def __post_init__(self) -> None:
        self.score_kind = SCORE_KINDS[self.mode]


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
    mode: str = DEFAULT_MODE,
    alpha: float | None = None,
    filters: SearchFilters | None = None,
) -> SearchAnswers:
    """For each query, the tenant's top_k chunks ranked by `mode` inside its encrypted index: "hybrid" (BM25 and
    vector ranks fused, score = the fused rank score, higher is better; `alpha` defaults to DEFAULT_ALPHA),
    "vector" (score = 1 - cosine distance) or "keyword" (score = BM25). `filters` are evaluated inside the index.

    An index without the full-text field (layout 1, built before it) is searched by vector, with a warning in the
    answer; filters on it are refused (its items lack the fields). `model_ids` are the fingerprints of the query
    model (current and legacy); a tenant whose index was built by another model is refused, since its vectors
    and the queries' would not be comparable.
    """
    check_search_options(mode, alpha, top_k)
    where = filters.to_cyborgdb() if filters else None
    ranked_by, warning = mode, None
    if mode == "hybrid" and alpha is None:
        alpha = DEFAULT_ALPHA
    if index is None or not queries:
        return SearchAnswers([[] for _ in queries], ranked_by, mode, alpha)
    if index.layout == LAYOUT_VECTOR_ONLY:
        if where is not None:
            raise InvalidSearchOption("filters", f"the index of tenant {tenant_id!r} predates the filter fields "
                                      "(vector-only layout): run `ingest-pipeline reconcile` (or rebuild) to move "
                                      "it to the current layout")
        if mode != "vector":
            ranked_by, alpha = "vector", None
            warning = (f"the index of tenant {tenant_id!r} has no full-text field yet (built before it): ranked by "
                       f"vector only, not {mode}; `ingest-pipeline reconcile` rebuilds it in the current layout")
            log.warning("%s", warning)
    if ranked_by != "keyword":
        with ledger.connect() as conn:
            recorded = ledger.tenants.embedding_model(conn, tenant_id)
        if recorded is not None and recorded not in model_ids:
            raise EmbeddingModelMismatch(
                f"the index of tenant {tenant_id!r} was built with model {recorded}, this search would use "
                f"{model_ids[0]}: set INGEST_MODEL_PATH back (re-embedding with another model: not supported yet)"
            )
    if ranked_by == "keyword":
        neighbours = index.keyword(queries, top_k=top_k, filters=where)
    elif ranked_by == "hybrid":
        neighbours = index.query(embedder.embed(queries), top_k=top_k, texts=queries, alpha=alpha, filters=where)
    else:
        neighbours = index.query(embedder.embed(queries), top_k=top_k, filters=where)
    score_kind = SCORE_KINDS[ranked_by]
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
            score = 1.0 - float(hit["distance"]) if "distance" in hit else float(hit["score"])
            answer.append(SearchHit(
                doc_id=row.doc_id, chunk_id=row.chunk_id, chunk_sequence=row.sequence,
                score=round(score, 6), source=row.doc_name,
                text=encryptor.decrypt_text(row.chunk_id, row.text_ciphertext, row.text_mac, row.seal_format),
                page=citation.page, section=citation.section, score_kind=score_kind,
            ))
        answers.append(answer)
    return SearchAnswers(answers, ranked_by, mode, alpha, warning)
