"""The search service: `POST /v1/search` answered from a tenant's index, the tenant named by the API key alone.

It reads what the pipeline wrote (the ledger, the key vault, CyborgDB) and writes nothing but a key's last use.
Everything it needs is built once per process, in the app's lifespan: the resources, a pooled ledger and key
vault, the index backend, and the model, which is loaded (and warmed) before `/readyz` answers ready. Concurrent
queries are embedded in one model call, and those of one tenant searched in one index call (`QueryBatcher`).
Every key check reads Postgres, so a revoked key is refused by every replica from the next request on.

Nothing a tenant sends or reads (queries, results, chunk text, keys) reaches a log line, a metric label or an
error body: errors name the field and the reason, logs the route template, status and duration.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources as package_files

import numpy as np
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_swagger import patch_fastapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ingest_pipeline.runtime.settings import ConfigurationError, Settings, positive_setting, postgres_dsn
from ingest_pipeline.service.batching import QueryBatcher
from ingest_pipeline.service.limits import RateLimiter, retry_after
from ingest_pipeline.service.pooling import PooledKeyVault, PooledLedger
from ingest_pipeline.stores import locks
from ingest_pipeline.stores.key_vault import TenantErased, UnknownTenant
from ingest_pipeline.stores.ledger.api_keys import ERASED
from ingest_pipeline.stores.tenant_index import CallTimedOut, IndexUnavailable, TenantIndex
from ingest_pipeline.work.search import (
    DEFAULT_MODE,
    MODES,
    InvalidSearchOption,
    SearchFilters,
    check_search_options,
    search_tenant,
)

log = logging.getLogger("ingest_pipeline.service")

MAX_TOP_K = 100
MAX_QUERY_CHARS = 2000
FILTER_FIELDS = tuple(SearchFilters.__dataclass_fields__)
REQUEST_FIELDS = ("query", "queries", "top_k", "filters", "mode", "alpha")
# One body for every refused key (missing, malformed, unknown, revoked): nothing tells them apart.
UNAUTHORIZED = {"error": "unauthorized", "detail": "a valid API key is required: Authorization: Bearer KEY"}
# An embedded index unused this long is let go (its memory; another process that wants it says so, see
# ServiceState.index). Reopening a large one costs seconds.
EMBEDDED_IDLE_S = 300.0
EMBEDDED_RELEASE_CHECK_S = 0.25


@dataclass(frozen=True)
class ServiceSettings:
    """The service's settings, from the environment: INGEST_API_RATE_PER_S (a key's default requests per second,
    20), INGEST_API_MAX_BATCH (queries per request, 32), INGEST_API_MAX_BODY_BYTES (65536),
    INGEST_API_BATCH_WAIT_MS (how long the first query waits for others to share its model call, 2),
    INGEST_API_CORS_ORIGINS (comma-separated origins allowed to call from a browser; unset: CORS off),
    INGEST_API_MODEL_THREADS (PyTorch threads of the model; default half the cores this process may use, at least
    one: the other half serves Postgres, the index and decryption), INGEST_API_INDEX_THREADS (OpenMP threads of one
    embedded index query, 1: concurrent requests already keep the cores busy, and a query spread over more threads
    costs more CPU in all)."""

    rate_per_s: float = 20.0
    max_batch: int = 32
    max_body_bytes: int = 65536
    batch_wait_ms: float = 2.0
    cors_origins: tuple[str, ...] = ()
    model_threads: int = 0
    index_threads: int = 1

    @classmethod
    def from_env(cls) -> ServiceSettings:
        origins = tuple(o.strip() for o in os.environ.get("INGEST_API_CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            rate_per_s=positive_setting("INGEST_API_RATE_PER_S", float) or cls.rate_per_s,
            max_batch=positive_setting("INGEST_API_MAX_BATCH", int) or cls.max_batch,
            max_body_bytes=positive_setting("INGEST_API_MAX_BODY_BYTES", int) or cls.max_body_bytes,
            batch_wait_ms=positive_setting("INGEST_API_BATCH_WAIT_MS", float) or cls.batch_wait_ms,
            cors_origins=origins,
            model_threads=positive_setting("INGEST_API_MODEL_THREADS", int)
            or max(1, len(os.sched_getaffinity(0)) // 2),
            index_threads=positive_setting("INGEST_API_INDEX_THREADS", int) or cls.index_threads,
        )


class FiltersBody(BaseModel):
    """Restricts the hits to documents by name (exact, or a folder prefix), upload month range and format,
    evaluated inside the encrypted index (the names of `ingest-pipeline search`'s filters)."""

    name: str | None = Field(None, description="a document name, exactly")
    name_prefix: str | None = Field(None, description="a folder of document names, ending in '/'")
    month_from: str | None = Field(None, description="first upload month, YYYY-MM")
    month_to: str | None = Field(None, description="last upload month, YYYY-MM")
    format: str | None = Field(None, description="the document's format: pdf, docx, pptx, xlsx, markdown, text, ... "
                               "(an unknown one is refused, listing the known); documents chunked before formats "
                               "were recorded match none")


class SearchRequest(BaseModel):
    """One query (`query`) or a batch (`queries`); the tenant is the API key's."""

    query: str | None = Field(None, description="the query; or `queries` for a batch")
    queries: list[str] | None = Field(None, description="a batch of queries (at most INGEST_API_MAX_BATCH)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    filters: FiltersBody | None = None
    mode: str | None = Field(None, description="hybrid (the default), vector or keyword")
    alpha: float | None = Field(None, ge=0, le=1, description="hybrid: weight of the vector ranking")


class HTTPRefusal(Exception):
    """An answer other than 200, with a body that names the field and the reason (never what was sent)."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _bad(field: str, reason: str) -> HTTPRefusal:
    return HTTPRefusal(400, {"error": "invalid request", "field": field, "detail": reason})


def _validate_query(field: str, value) -> str:
    if not isinstance(value, str):
        raise _bad(field, "must be a string")
    if not value.strip():
        raise _bad(field, "must not be empty")
    if len(value) > MAX_QUERY_CHARS:
        raise _bad(field, f"must be at most {MAX_QUERY_CHARS} characters")
    return value


def _refusal(exc: InvalidSearchOption) -> HTTPRefusal:
    """400 naming the field, with search's reason but not the value it quotes (tenant data)."""
    return _bad(exc.field, str(exc).split(", got ")[0])


def _validate_filters(value) -> dict:
    """The filters, checked as search checks them (SearchFilters.to_cyborgdb); returned by name, as JSON."""
    if not isinstance(value, dict):
        raise _bad("filters", "must be an object")
    filters = {}
    for name, item in value.items():
        if name not in FILTER_FIELDS:
            shown = name if re.fullmatch(r"[A-Za-z0-9_]{1,40}", str(name)) else "?"
            raise _bad(f"filters.{shown}", f"unknown filter; known: {', '.join(FILTER_FIELDS)}")
        if item is None:
            continue
        if not isinstance(item, str) or not item or len(item) > 1024:
            raise _bad(f"filters.{name}", "must be a non-empty string of at most 1024 characters")
        filters[name] = item
    try:
        SearchFilters(**filters).to_cyborgdb()
    except InvalidSearchOption as exc:
        raise _refusal(exc) from None
    return filters


@dataclass(frozen=True)
class ParsedSearch:
    queries: list[str]
    batch: bool
    top_k: int
    options: dict


def parse_search(body, max_batch: int) -> ParsedSearch:
    """The request body checked field by field; HTTPRefusal(400) names the first field that is wrong."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object")
    for name in body:
        if name not in REQUEST_FIELDS:
            shown = name if re.fullmatch(r"[A-Za-z0-9_]{1,40}", str(name)) else "?"
            raise _bad(shown, f"unknown field; known: {', '.join(REQUEST_FIELDS)}")
    if ("query" in body) == ("queries" in body):
        raise _bad("query", "give either query or queries")
    if "query" in body:
        queries, batch = [_validate_query("query", body["query"])], False
    else:
        items = body["queries"]
        if not isinstance(items, list) or not items:
            raise _bad("queries", "must be a non-empty list of strings")
        if len(items) > max_batch:
            raise _bad("queries", f"at most {max_batch} queries per request")
        queries, batch = [_validate_query(f"queries[{i}]", q) for i, q in enumerate(items)], True
    top_k = body.get("top_k", 5)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise _bad("top_k", f"must be an integer from 1 to {MAX_TOP_K}")
    options: dict = {}
    mode, alpha = body.get("mode"), body.get("alpha")
    if mode is not None and not isinstance(mode, str):
        raise _bad("mode", f"must be one of {', '.join(MODES)}")
    if alpha is not None and isinstance(alpha, float) and not math.isfinite(alpha):
        raise _bad("alpha", "must be a number from 0 to 1")
    try:
        check_search_options(mode or DEFAULT_MODE, alpha, top_k)
    except InvalidSearchOption as exc:
        raise _refusal(exc) from None
    if mode is not None:
        options["mode"] = mode
    if alpha is not None:
        options["alpha"] = float(alpha)
    if body.get("filters") is not None:
        filters = _validate_filters(body["filters"])
        if filters:
            options["filters"] = filters
    return ParsedSearch(queries, batch, top_k, options)


class _Vectors:
    """An embedder whose answer was already computed (by the batcher) for exactly these queries; for a keyword
    search (None) the model itself, should the index answer by vector only (an old layout)."""

    def __init__(self, vectors: np.ndarray | None, model):
        self._vectors, self._model = vectors, model

    def embed(self, texts: list[str], in_order: bool = False) -> np.ndarray:
        return self._model.embedder.embed(texts) if self._vectors is None else self._vectors


def _run_search(*, filters: dict | None = None, **arguments) -> list[list[dict]]:
    """`work.search.search_tenant` with the service's arguments (mode, alpha and filters as a request set them):
    each query's hits as `search --json` prints them, each with the answer's `warning` (why it ranked otherwise
    than asked, or None), as the CLI's hits carry it."""
    answers = search_tenant(filters=SearchFilters(**filters) if filters else None, **arguments)
    return [[hit.as_dict() | {"warning": answers.warning} for hit in hits] for hits in answers.hits]


class Metrics:
    """Prometheus metrics of one app: requests and latency by route template and status, model batch sizes."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("search_service_requests_total", "HTTP requests by route template, method, status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("search_service_request_seconds", "HTTP request latency by route template",
                                 ["route"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10))
        self.errors = Counter("search_service_errors_total", "answers with status >= 400 by route template, status",
                              ["route", "status"], registry=self.registry)
        self.batch = Histogram("search_service_embedding_batch_texts", "queries per model call",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class ServiceState:
    """What the service builds once per process."""

    def __init__(self, settings: ServiceSettings):
        from ingest_pipeline.definitions import build_resources

        self.settings = settings
        self.resources = build_resources()
        base = Settings.from_env()
        self.ledger = PooledLedger(postgres_dsn(base.pg_dsn, base.home))
        self.ledger.migrate()
        self.keyring = self.resources["keyring"]
        store = self.keyring.store
        store.vault = PooledKeyVault(store.vault)
        self.indexes = self.resources["cyborgdb"].indexes
        self.embedded = self.indexes.embedded
        self.model = self.resources["embedding_model"]
        self.model_ids = (self.model.model_id, self.model.legacy_model_id)
        self.limiter = RateLimiter()
        self.metrics = Metrics()
        self.model_ready = threading.Event()
        self.model_error: str | None = None
        self.batcher = QueryBatcher(self._embed, self._search_group, settings.batch_wait_ms / 1000, max_texts=64,
                                    observe=self.metrics.batch.observe)
        self._handles: OrderedDict[tuple, TenantIndex] = OrderedDict()
        self._handles_lock = threading.Lock()
        self._last_use: dict[str, float] = {}

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.model.embedder.embed(texts)

    def _search_group(self, group: tuple, queries: list[str], vectors: np.ndarray | None) -> list:
        tenant_id, top_k, options = group
        return self.search(tenant_id, queries, vectors, top_k, json.loads(options))

    def load_model(self) -> None:
        """Load the model and run one query through it (the first call is slower), then say ready."""
        try:
            if self.settings.model_threads and self.model.resolved_backend == "torch":
                import torch

                torch.set_num_threads(self.settings.model_threads)
            self.model.embedder.embed(["warm up"])
        except Exception as exc:  # readyz says why (the type only); the process keeps serving health
            self.model_error = type(exc).__name__
            log.error("the embedding model did not load: %s", type(exc).__name__)
            return
        self.model_ready.set()

    def index(self, keys) -> tuple[TenantIndex | None, bool]:
        """The tenant's live index, and whether it is kept for the next requests. Handles are kept by tenant,
        generation and index key (a rebuild or a new key opens anew). An embedded index is kept only while no
        other process wants it (`_wanted_elsewhere`: a writer or an asset check holding or awaiting the tenant's
        lock, a CLI search holding INDEX_WANTED) and for at most EMBEDDED_IDLE_S without a request
        (`release_embedded`): cyborgdb-core locks an open index to one process, and those (which open it retrying
        while it is held open) must get it; while one is at work, each request opens it and lets go after."""
        with self.ledger.connect() as conn:
            live, _, _ = self.ledger.tenants.generations(conn, keys.tenant_id)
            if self.embedded and _wanted_elsewhere(conn, keys.tenant_id):
                self.drop_handles(keys.tenant_id)
                return self.indexes.open(keys, generation=live), False
        cache_key = (keys.tenant_id, live, hashlib.sha256(keys.index_key).digest())
        with self._handles_lock:
            if cache_key in self._handles:
                self._handles.move_to_end(cache_key)
                self._last_use[keys.tenant_id] = time.monotonic()
                return self._handles[cache_key], True
        index = self.indexes.open(keys, generation=live)
        if index is not None:
            with self._handles_lock:
                self._handles[cache_key] = index
                self._last_use[keys.tenant_id] = time.monotonic()
                while len(self._handles) > 256:
                    self._handles.popitem(last=False)
        return index, True

    def drop_handles(self, tenant_id: str) -> None:
        """Let go of the tenant's kept index handles (an embedded store is released with its last reference)."""
        with self._handles_lock:
            dropped = [key for key in self._handles if key[0] == tenant_id]
            for key in dropped:
                del self._handles[key]
            self._last_use.pop(tenant_id, None)
        if dropped and self.embedded:
            gc.collect()

    def release_embedded(self, stop: threading.Event) -> None:
        """Every EMBEDDED_RELEASE_CHECK_S: let go of embedded indexes unused for EMBEDDED_IDLE_S or wanted by
        another process (a writer, a check, a CLI search), so that none waits long for a service holding one open."""
        while not stop.wait(EMBEDDED_RELEASE_CHECK_S):
            with self._handles_lock:
                tenants = dict(self._last_use)
            if not tenants:
                continue
            try:
                with self.ledger.connect() as conn:
                    now = time.monotonic()
                    for tenant_id, used in tenants.items():
                        if now - used > EMBEDDED_IDLE_S or _wanted_elsewhere(conn, tenant_id):
                            self.drop_handles(tenant_id)
            except psycopg.Error:  # Postgres down: no writer can work either; let go of everything
                for tenant_id in tenants:
                    self.drop_handles(tenant_id)

    def search(self, tenant_id: str, queries: list[str], vectors: np.ndarray | None, top_k: int, options: dict
               ) -> list:
        """The hits (as `search --json` prints them) of each query in the tenant's index."""
        with self.ledger.connect() as conn:
            try:
                keys = self.keyring.keyset(tenant_id, conn)
            except UnknownTenant:  # a key issued before the tenant's first ingest
                return [[] for _ in queries]
        index, kept = self.index(keys.index_keys())
        answers = _run_search(
            tenant_id=tenant_id, queries=queries, top_k=top_k, embedder=_Vectors(vectors, self.model), index=index,
            ledger=self.ledger, model_ids=self.model_ids,
            encryptor_for=lambda v: (keys if v in keys.data_keys else self.keyring.keyset(tenant_id)).encryptor(v),
            **options,
        )
        if self.embedded and not kept and index is not None:
            del index
            gc.collect()  # the engine's store is let go with its last reference
        return answers

    def readiness(self) -> dict[str, str]:
        checks = {}
        try:
            with self.ledger.connect() as conn:
                conn.execute("SELECT 1")
            with self.keyring.store.vault.connect() as conn:
                conn.execute("SELECT 1")
            checks["postgres"] = "ok"
        except psycopg.Error as exc:
            checks["postgres"] = f"unavailable ({type(exc).__name__})"
        try:
            self.indexes.ping()
            checks["index"] = "ok"
        except Exception as exc:
            checks["index"] = f"unavailable ({type(exc).__name__})"
        checks["model"] = "ok" if self.model_ready.is_set() else (
            f"failed ({self.model_error})" if self.model_error else "loading")
        return checks


def _wanted_elsewhere(conn: psycopg.Connection, tenant_id: str) -> bool:
    """Whether another process wants the tenant's embedded index: a writer or a locked reader (an asset check)
    holds, or waits for, the tenant's lock (`TenantLocks.writer`, exclusive, and `reader`, shared), or a search
    outside that lock holds INDEX_WANTED (`Ledger.index_wanted`). All of them open the tenant's index."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid IN (%s::oid, %s::oid)"
        " AND objid = hashtext(%s)::oid AND objsubid = 2) AS busy",
        (locks.TENANT.classid, locks.INDEX_WANTED.classid, tenant_id),
    ).fetchone()["busy"]


def _dependency_down(exc: BaseException) -> str | None:
    """Which dependency an exception says is down (its answer is 503 and the next request tries again)."""
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown):
        return "postgres"
    if isinstance(exc, IndexUnavailable | CallTimedOut | ConnectionError | TimeoutError):
        return "index"
    return None


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPRefusal(413, {"error": "body too large", "detail": f"at most {limit} bytes"})
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise HTTPRefusal(413, {"error": "body too large", "detail": f"at most {limit} bytes"})
    return bytes(body)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service's ASGI app (its resources are built when it starts)."""
    settings = settings or ServiceSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await run_in_threadpool(ServiceState, settings)
        app.state.service = state
        state.batcher.start()
        stop = threading.Event()
        if state.embedded:
            threading.Thread(target=state.release_embedded, args=(stop,), name="embedded-index-release",
                             daemon=True).start()
        loader = asyncio.get_running_loop().run_in_executor(None, state.load_model)
        try:
            yield
        finally:
            stop.set()
            await state.batcher.stop()
            loader.cancel()

    app = FastAPI(title="ingest-pipeline search", version="1", lifespan=lifespan, docs_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  description="Search a tenant's encrypted index; the API key names the tenant.")
    # /docs with Swagger UI's assets served by the app itself (FastAPI's own page loads them from a CDN).
    patch_fastapi(app, redirect_from_root_to_docs=False)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # the type only: an exception's text may quote what it was handling
            log.error("unhandled %s on %s", type(exc).__name__, _route_template(request))
            response = JSONResponse({"error": "internal error"}, status_code=500)
        elapsed = time.perf_counter() - started
        route, status = _route_template(request), str(response.status_code)
        state = getattr(request.app.state, "service", None)
        if state is not None:
            state.metrics.requests.labels(route, request.method, status).inc()
            state.metrics.latency.labels(route).observe(elapsed)
            if response.status_code >= 400:
                state.metrics.errors.labels(route, status).inc()
        log.info("%s %s %s %.1f ms", request.method, route, status, elapsed * 1000)
        return response

    @app.exception_handler(HTTPRefusal)
    async def refused(request: Request, exc: HTTPRefusal):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse({"error": "not found"}, status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc):
        return JSONResponse({"error": "method not allowed"}, status_code=405)

    async def authenticate(request: Request, state: ServiceState):
        values = request.headers.getlist("authorization")
        scheme, _, key = (values[0] if len(values) == 1 else "").partition(" ")
        unauthorized = HTTPRefusal(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not key or " " in key.strip():
            raise unauthorized
        row = await run_in_threadpool(state.ledger.api_keys.check, key.strip())
        if row is None:
            raise unauthorized
        if row.revoked_at is not None:
            if row.revoked_reason == ERASED:
                raise HTTPRefusal(410, {"error": "gone", "detail": "this key's tenant was erased"})
            raise unauthorized
        return row

    @app.post("/v1/search", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}},
        "security": [{"bearer": []}]}, summary="Search the API key's tenant")
    async def search(request: Request):
        """`{"query": ...}` answers `{"results": [hits]}`; `{"queries": [...]}` answers `{"results": [[hits], ...]}`.
        Each hit: doc_id, chunk_id, chunk_sequence, score, score_kind, text, source, page, section, warning (as
        `search --json`)."""
        state: ServiceState = request.app.state.service
        try:
            row = await authenticate(request, state)
            wait = state.limiter.acquire(row.key_id, row.rate_per_s or settings.rate_per_s)
            if wait:
                raise HTTPRefusal(429, {"error": "rate limited", "detail": "this key's request rate is exceeded"},
                                  {"Retry-After": retry_after(wait)})
            raw = await _read_body(request, settings.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise _bad("body", "is not valid JSON") from None
            parsed = parse_search(body, settings.max_batch)
            if not state.model_ready.is_set():
                raise HTTPRefusal(503, {"error": "unavailable", "dependency": "model"}, {"Retry-After": "5"})
            group = (row.tenant_id, parsed.top_k, json.dumps(parsed.options, sort_keys=True))
            answers = await state.batcher.submit(group, parsed.queries,
                                                 embed=parsed.options.get("mode", DEFAULT_MODE) != "keyword")
        except HTTPRefusal:
            raise
        except TenantErased:
            raise HTTPRefusal(410, {"error": "gone", "detail": "this key's tenant was erased"}) from None
        except InvalidSearchOption as exc:  # what only the tenant's index can tell (filters on an old layout)
            raise _refusal(exc) from None
        except Exception as exc:
            dependency = _dependency_down(exc)
            if dependency is None:
                raise
            log.warning("search: %s unavailable (%s)", dependency, type(exc).__name__)
            raise HTTPRefusal(503, {"error": "unavailable", "dependency": dependency}, {"Retry-After": "1"}) from None
        return {"results": answers if parsed.batch else answers[0]}

    @app.get("/healthz", summary="The process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Postgres, the index backend and the model are ready")
    async def readyz(request: Request):
        state: ServiceState = request.app.state.service
        checks = await run_in_threadpool(state.readiness)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        return Response(generate_latest(request.app.state.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((package_files.files("ingest_pipeline.service") / "page.html").read_text(),
                            headers={"Content-Security-Policy": "default-src 'self'; script-src 'self' "
                                     "'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'",
                                     "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})

    return app


def serve(host: str = "127.0.0.1", port: int = 8080) -> int:
    """Run the service on uvicorn (one process; run more behind a proxy to use more cores)."""
    import uvicorn

    logging.getLogger("ingest_pipeline.service").setLevel(logging.INFO)
    try:
        settings = ServiceSettings.from_env()
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    # cyborgdb-core's OpenMP runtime reads this once, when the index backend is first imported (below, in the app's
    # lifespan); PyTorch's threads are set apart (INGEST_API_MODEL_THREADS).
    os.environ["OMP_NUM_THREADS"] = str(settings.index_threads)
    # The access log would print request lines (paths, query strings): the service logs route templates instead.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="info",
                server_header=False, proxy_headers=False)
    return 0
