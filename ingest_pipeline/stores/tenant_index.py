"""A tenant's encrypted CyborgDB index, embedded (cyborgdb-core on disk) or remote (cyborgdb-service).

Callers never name an index: a `TenantIndex` is opened for a tenant with that tenant's own index key,
so the search path has no way to reach another tenant's vectors.
"""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ingest_pipeline.core.crypto import TenantKeys
from ingest_pipeline.core.ids import index_name

METRIC = "cosine"
# Each item's metadata holds its chunk's text under TEXT_FIELD, a full-text (BM25) field that CyborgDB encrypts
# under the tenant's index key like the vectors. Index layouts: 1 = vectors and metadata only (indexes created
# before the field; vector search only), 2 = with the full-text field (hybrid and keyword search).
TEXT_FIELD = "text"
LAYOUT_VECTOR_ONLY = 1
LAYOUT_FULL_TEXT = 2
CURRENT_LAYOUT = LAYOUT_FULL_TEXT
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_CALL_TIMEOUT_S = 60.0
# A call that fails transiently (5xx, 429, a refused or dropped connection, a timeout) is retried with
# exponential backoff and jitter for at most this long, and at most RETRY_ATTEMPTS times, before the step fails
# (and its own RetryPolicy takes over).
DEFAULT_RETRY_BUDGET_S = 60.0
RETRY_ATTEMPTS = 8

log = logging.getLogger(__name__)


class PermanentIndexError(ValueError):
    """A CyborgDB error that retrying cannot fix: the step fails at once, without retries. The message names
    the tenant and never quotes data."""


class IndexDimensionMismatch(PermanentIndexError):
    """The index was built for vectors of another size (a different embedding model)."""


class IndexKeyMismatch(PermanentIndexError):
    """The index exists but does not open with this tenant's index key (a different master key)."""


class IndexAuthenticationFailed(PermanentIndexError):
    """cyborgdb-service refused the client's credentials (HTTP 401 or 403): a wrong or revoked API key."""


class IndexUnavailable(RuntimeError):
    """A CyborgDB call failed. The message names the operation and the error type, never the data:
    an SDK error can quote the request, and the request holds plaintext vectors. Retryable.

    `pending_call` is the thread of a call that timed out but may still write: the writer must not give
    up the tenant's lock before it ends.
    """

    def __init__(self, message: str, pending_call: threading.Thread | None = None):
        super().__init__(message)
        self.pending_call = pending_call


class CallTimedOut(TimeoutError):
    def __init__(self, message: str, worker: threading.Thread):
        super().__init__(message)
        self.worker = worker


def _within(timeout_s: float | None, call, *args, **kwargs):
    """Run `call` on a daemon thread and give up after `timeout_s`.

    Neither SDK bounds its calls; this bounds how long a writer waits (and holds its row locks).
    A call that times out may still finish in the background: the writer fails and retries, and
    every write is an idempotent upsert or delete by id.
    """
    if not timeout_s:
        return call(*args, **kwargs)
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name="cyborgdb-call")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise CallTimedOut(f"no answer within {timeout_s:g} s", worker)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _status(exc: BaseException) -> str:
    """The error's type and HTTP status, and "no space left on device" when it says so; never its message."""
    code = getattr(exc, "status_code", None)
    status = f"{type(exc).__name__}, HTTP {code}" if code else type(exc).__name__
    if "no space left on device" in str(exc).lower() or getattr(exc, "errno", None) == errno.ENOSPC:
        status += ": no space left on device"
    return status


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call can succeed.

    cyborgdb (the REST SDK) maps every failure onto its own exception taxonomy and fixes `retryable` per type:
    ServiceError (any 5xx), RateLimitError (429) and TransportError (no HTTP response: refused, reset, DNS, TLS,
    timeout) are retryable; AuthenticationError (401/403), ValidationError (400/422), NotFoundError (404) and
    ConflictError (409) are not. A call that gave no answer within the timeout, and Python's own connection and
    timeout errors, are transient too. Anything else (an embedded cyborgdb-core error) is not retried within
    the call; the step's RetryPolicy decides, except an embedded index held open by another process (cyborgdb-core
    locks an index's store to one process while it is open: a search while an ingest writes, or the other way
    round), which is waited for.
    """
    if isinstance(exc, CallTimedOut | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, ValueError) and ("AlreadyOpen" in str(exc) or "locked by another store" in str(exc)):
        return True
    try:
        from cyborgdb.exceptions import CyborgDBError
    except ImportError:  # the SDK is only needed for the service backend
        return False
    return isinstance(exc, CyborgDBError) and bool(exc.retryable)


def _permanent(operation: str, tenant_id: str, exc: BaseException) -> PermanentIndexError | None:
    """The permanent error `exc` stands for, or None. Only types and status codes are named, never messages."""
    if isinstance(exc, PermanentIndexError):
        return exc
    try:
        from cyborgdb.exceptions import AuthenticationError
    except ImportError:
        return None
    if isinstance(exc, AuthenticationError):
        return IndexAuthenticationFailed(
            f"cyborgdb-service refused the credentials of tenant {tenant_id!r} on {operation} ({_status(exc)}): "
            "check INGEST_CYBORGDB_API_KEY; not retried"
        )
    return None


def _retrying(operation: str, tenant_id: str, timeout_s: float | None, budget_s: float, call, *args,
              classify=None, **kwargs):
    """`call` bounded by `timeout_s`, retried while it fails transiently, for at most `budget_s` in all.

    A call that timed out is given `timeout_s` more to end before it is retried, so that two attempts never
    write at once; if it has not ended by then, the call fails with IndexUnavailable carrying that call (the
    writer keeps the tenant's lock until it ends). Permanent errors are raised at once.
    `classify(exc)` may turn an error into a permanent one first (a wrong index key, say).
    """

    def attempt():
        try:
            return _within(timeout_s, call, *args, **kwargs)
        except CallTimedOut as exc:
            exc.worker.join(timeout_s)  # a retry must never overlap the call that timed out
            if exc.worker.is_alive():
                raise _GaveUp(exc.worker) from None
            raise

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning("CyborgDB %s for tenant %r failed (%s); retry %d in %.1f s", operation, tenant_id,
                    _status(exc), state.attempt_number, state.next_action.sleep if state.next_action else 0.0)

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(budget_s) | stop_after_attempt(RETRY_ATTEMPTS),
        wait=wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5),
        before_sleep=before_sleep, reraise=True,
    )
    try:
        return retrying(attempt)
    except _GaveUp as gave_up:
        raise IndexUnavailable(
            f"CyborgDB {operation} for tenant {tenant_id!r} failed (CallTimedOut, still running)",
            pending_call=gave_up.worker,
        ) from None
    except PermanentIndexError:
        raise
    except Exception as exc:
        permanent = (classify(exc) if classify else None) or _permanent(operation, tenant_id, exc)
        if permanent is not None:
            raise permanent from None
        raise IndexUnavailable(
            f"CyborgDB {operation} for tenant {tenant_id!r} failed ({_status(exc)})",
            pending_call=exc.worker if isinstance(exc, CallTimedOut) else None,
        ) from None


class _GaveUp(Exception):
    def __init__(self, worker: threading.Thread):
        super().__init__("a call that timed out is still running")
        self.worker = worker


def _guarded(operation: str, tenant_id: str, call, *args, timeout_s: float | None = None,
             budget_s: float = DEFAULT_RETRY_BUDGET_S, **kwargs):
    """A CyborgDB call, retried while it fails transiently; every failure becomes IndexUnavailable (retryable
    by the step) or a PermanentIndexError (not retryable), with a message that names the tenant, never the data.
    """
    return _retrying(operation, tenant_id, timeout_s, budget_s, call, *args, **kwargs)


def _with_socket_timeouts(client, timeout_s: float | None) -> None:
    """Give every request of a cyborgdb SDK client connect and read timeouts within `timeout_s`.

    The SDK sends requests without a timeout: a stalled connection would keep its thread forever. With these,
    a stalled request ends by itself (as a retryable TransportError) shortly before `_within` gives up on it,
    even though urllib3 replays it once.
    """
    if not timeout_s:
        return
    rest = client.api_client.rest_client
    request = rest.request
    default = (min(5.0, timeout_s / 6), timeout_s / 3)

    def request_with_timeout(*args, _request_timeout=None, **kwargs):
        return request(*args, _request_timeout=_request_timeout or default, **kwargs)

    rest.request = request_with_timeout


class TenantIndex:
    """Upsert, delete, query and count one tenant's vectors; the same calls on either backend."""

    def __init__(
        self, tenant_id: str, handle, index_key: bytes, embedded: bool, generation: int = 1,
        timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
    ):
        self.tenant_id = tenant_id
        self.generation = generation
        self._handle = handle
        self._key = index_key
        self._embedded = embedded
        self._timeout_s = timeout_s
        self._retry_budget_s = retry_budget_s
        self._layout: int | None = None

    def _kw(self) -> dict:
        return {"index_key": self._key} if self._embedded else {}

    def check_dimension(self, dimension: int) -> None:
        actual = int(self._handle.dimension or 0)
        if actual and actual != dimension:
            raise IndexDimensionMismatch(
                f"index of tenant {self.tenant_id!r} holds {actual}-d vectors, the model makes {dimension}-d"
            )

    def _call(self, operation: str, method: str, *args, **kwargs):
        return _guarded(operation, self.tenant_id, getattr(self._handle, method), *args, timeout_s=self._timeout_s,
                        budget_s=self._retry_budget_s, **kwargs, **self._kw())

    def upsert(self, items: list[dict]) -> None:
        if items:
            self._call("upsert", "upsert", items)

    def delete(self, ids: list[str]) -> None:
        if ids:
            self._call("delete", "delete", list(ids))

    @property
    def layout(self) -> int:
        """LAYOUT_FULL_TEXT when the index was created with the full-text field, else LAYOUT_VECTOR_ONLY (read
        from the index's own configuration once: it is fixed at creation)."""
        if self._layout is None:
            def schema() -> dict:
                if self._embedded:
                    return self._handle.index_config().get("metadata_schema") or {}
                return self._handle.metadata_schema
            fields = _guarded("describe", self.tenant_id, schema, timeout_s=self._timeout_s,
                              budget_s=self._retry_budget_s)
            full_text = bool(fields.get(TEXT_FIELD, {}).get("full_text"))
            self._layout = LAYOUT_FULL_TEXT if full_text else LAYOUT_VECTOR_ONLY
        return self._layout

    def query(
        self, vectors: np.ndarray, top_k: int, *, texts: list[str] | None = None, alpha: float | None = None,
        filters: dict | None = None,
    ) -> list[list[dict]]:
        """Nearest neighbours for each row of `vectors`: lists of {"id", "distance"}; with `texts` (one per row,
        on a full-text index), hybrid: BM25 over the text field and the vector ranks fused inside the index by
        weighted reciprocal-rank fusion, lists of {"id", "score"} (higher is better; `alpha` 0 = BM25 only,
        1 = vectors only). `filters` are CyborgDB metadata filters, evaluated inside the index."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        empty = [[] for _ in range(len(vectors))]
        if self._embedded and self.count() == 0:  # an empty embedded index cannot be queried
            return empty
        extra = {"filters": filters} if filters else {}
        try:
            if texts is None:
                results = self._call("query", "query", vectors, top_k=top_k, include=["distance"], **extra)
                if results and isinstance(results[0], dict):
                    results = [results]
            else:  # the text leg takes one query text per call
                results = [self._call("query", "query", vector, top_k=top_k, text=text, alpha=alpha, **extra)
                           for vector, text in zip(vectors, texts, strict=True)]
        except IndexUnavailable:
            if self.count() == 0:
                return empty
            raise
        return [list(r) for r in results]

    def keyword(self, texts: list[str], top_k: int, filters: dict | None = None) -> list[list[dict]]:
        """BM25 over the text field for each text, inside the index (no vector): lists of {"id", "score"}."""
        if self._embedded and self.count() == 0:  # as query(): an empty embedded index is not asked
            return [[] for _ in texts]
        extra = {"filters": filters} if filters else {}
        return [list(self._call("keyword query", "query_metadata", text=text, top_k=top_k, **extra) or [])
                for text in texts]

    def metadata(self, ids: list[str]) -> dict[str, dict]:
        """The metadata the index holds for these ids (decrypted by CyborgDB), 500 per call."""
        found: dict[str, dict] = {}
        ids = list(ids)
        for start in range(0, len(ids), 500):
            for item in self._call("get", "get", ids[start:start + 500], include=["metadata"]):
                found[item["id"]] = item.get("metadata") or {}
        return found

    def list_ids(self) -> set[str]:
        return set(self._call("list_ids", "list_ids"))

    def count(self) -> int:
        """How many vectors the index holds: one call that returns a number on either backend."""
        if self._embedded:
            return int(self._call("count", "get_num_vectors"))
        return int(_guarded("count", self.tenant_id, _service_num_vectors, self._handle, timeout_s=self._timeout_s,
                            budget_s=self._retry_budget_s))

    def present(self, ids: list[str]) -> set[str]:
        """Which of these ids the index holds (fetched by id, without their vectors), 500 per call."""
        found: set[str] = set()
        ids = list(ids)
        for start in range(0, len(ids), 500):
            items = self._call("get", "get", ids[start:start + 500], include=[])
            found.update(item["id"] for item in items)
        return found

    def drop(self) -> None:
        self._call("delete_index", "delete_index")

    @property
    def trains_itself(self) -> bool:
        """cyborgdb-service trains an index by itself past a threshold; the embedded library never does."""
        return not self._embedded

    def is_trained(self) -> bool:
        return bool(_guarded("is_trained", self.tenant_id, self._handle.is_trained, timeout_s=self._timeout_s,
                             budget_s=self._retry_budget_s))

    def train(self) -> None:
        """Cluster the index (IVF) so queries probe a few lists instead of scanning every vector. It takes
        minutes on a large index, so it is not bounded by the per-call timeout."""
        _guarded("train", self.tenant_id, self._handle.train, timeout_s=None, budget_s=self._retry_budget_s,
                 **self._kw())


def _layout_options(layout: int) -> dict:
    """create_index's options for an index layout."""
    if layout == LAYOUT_FULL_TEXT:
        return {"text_fields": [TEXT_FIELD]}
    if layout == LAYOUT_VECTOR_ONLY:
        return {}
    raise ValueError(f"unknown index layout {layout!r}")


def _service_num_vectors(handle) -> int:
    """cyborgdb-service's count of an index's vectors (POST /v1/vectors/num_vectors). The SDK's EncryptedIndex has
    no method for it, so this calls the SDK's generated client as its own methods do (raw: the generated response
    model drops the `result` field)."""
    import json

    import urllib3.exceptions
    from cyborgdb.exceptions import translate_api_error
    from cyborgdb.openapi_client.exceptions import ApiException

    try:
        response = handle._api.get_index_size_v1_vectors_num_vectors_post_without_preload_content(
            index_operation_request=handle._ior(), _headers=handle._request_headers())
        body = response.data
        if response.status >= 400:
            ApiException.from_response(http_resp=response, body=body.decode(errors="replace"), data=None)
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise translate_api_error(exc, "Failed to count vectors") from exc
    return int(json.loads(body)["result"])


def check_service_url(url: str) -> str:
    """Refuse a CyborgDB URL that would send index keys and vectors in clear over a network, or that parsers
    could read differently; return it with its scheme and host in lower case (what the SDK is given).

    Plain http is allowed to a loopback host only. Which host that is must not depend on the parser: the URL
    check (urllib.parse) and the HTTP client (urllib3) disagree on `http://evil\\@127.0.0.1` (127.0.0.1 for
    one, `evil` for the other), so userinfo, backslashes, whitespace, control and non-ASCII characters, a query
    or fragment, and anything the parse does not reproduce exactly are refused, and both parsers must name the
    same host.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("INGEST_CYBORGDB_URL must be an http(s) URL with a host, got an empty value")
    if any(not (0x21 <= ord(c) <= 0x7e) for c in url) or "\\" in url:
        raise ValueError("INGEST_CYBORGDB_URL holds whitespace, a backslash, a control or non-ASCII character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("INGEST_CYBORGDB_URL does not parse as a URL") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in {"http", "https"} or not host:
        raise ValueError(f"INGEST_CYBORGDB_URL must be an http(s) URL with a host, got scheme {scheme!r}")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise ValueError("INGEST_CYBORGDB_URL must not carry user information (user:password@): "
                         "the API key goes in INGEST_CYBORGDB_API_KEY")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("INGEST_CYBORGDB_URL must not carry a query or a fragment")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    normalized = urlunsplit((scheme, netloc, parts.path, "", ""))
    if normalized.lower() != url.lower():
        raise ValueError("INGEST_CYBORGDB_URL does not survive a strict parse unchanged; write it as "
                         "scheme://host[:port][/path]")
    try:
        client_host = (parse_url(normalized).host or "").lower().strip("[]")
    except LocationParseError:
        client_host = None
    if client_host != host:
        raise ValueError("INGEST_CYBORGDB_URL names its host ambiguously")
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing plain http to CyborgDB at {host}: index keys and vectors would cross the network "
            "in clear; use https://"
        )
    return normalized


class CyborgIndexes:
    """Opens tenants' indexes on one CyborgDB backend."""

    def __init__(
        self, *, storage_dir: str | Path | None = None, url: str = "", api_key: str = "",
        timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
    ):
        self._timeout_s = timeout_s
        self._retry_budget_s = retry_budget_s
        if url:
            import cyborgdb

            url = check_service_url(url)
            # The SDK logs every error with the service's response body, and a rejected request's body (422)
            # quotes the request: vectors and contents. Our own messages name the operation, tenant and status.
            logging.getLogger("cyborgdb.exceptions").setLevel(logging.CRITICAL)
            # The SDK turns certificate checks off by itself for a loopback host unless told otherwise.
            verify_ssl = True if url.startswith("https://") else None
            self._client = cyborgdb.Client(base_url=url, api_key=api_key or None, verify_ssl=verify_ssl)
            _with_socket_timeouts(self._client, timeout_s)
            self._embedded = False
        else:
            import cyborgdb_core

            Path(storage_dir).mkdir(parents=True, exist_ok=True)
            self._client = cyborgdb_core.Client(storage_config=cyborgdb_core.StorageConfig.disk(str(storage_dir)))
            self._embedded = True

    @property
    def backend(self) -> str:
        return "cyborgdb-core (embedded)" if self._embedded else "cyborgdb-service"

    @property
    def embedded(self) -> bool:
        """Whether indexes are cyborgdb-core's on this machine's disk, each open in one process at a time."""
        return self._embedded

    def _names(self, tenant_id: str) -> set[str]:
        return set(_guarded("list_indexes", tenant_id, self._client.list_indexes, timeout_s=self._timeout_s,
                            budget_s=self._retry_budget_s))

    def ping(self) -> None:
        """Raises when the backend does not answer (one listing call: the service's readiness check)."""
        self._names("readiness")

    def exists(self, tenant_id: str, generation: int = 1) -> bool:
        return index_name(tenant_id, generation) in self._names(tenant_id)

    def open(
        self, keys: TenantKeys, dimension: int | None = None, create: bool = False, generation: int = 1,
        layout: int = CURRENT_LAYOUT,
    ) -> TenantIndex | None:
        """One generation of the tenant's index, created when `create` is set (in `layout`: with the full-text
        field by default); None when it does not exist."""
        name = index_name(keys.tenant_id, generation)
        if name in self._names(keys.tenant_id):
            handle = self._load(name, keys)
        elif create:
            try:
                handle = _guarded("create_index", keys.tenant_id, self._client.create_index, name, keys.index_key,
                                  timeout_s=self._timeout_s, budget_s=self._retry_budget_s, dimension=dimension,
                                  metric=METRIC, **_layout_options(layout))
            except IndexUnavailable:
                # Another writer may have created it between the listing and the create.
                if name not in self._names(keys.tenant_id):
                    raise
                handle = self._load(name, keys)
        else:
            return None
        index = TenantIndex(keys.tenant_id, handle, keys.index_key, self._embedded, generation, self._timeout_s,
                            self._retry_budget_s)
        if dimension:
            index.check_dimension(dimension)
        return index

    def _load(self, name: str, keys: TenantKeys):
        def wrong_key(exc: BaseException) -> IndexKeyMismatch | None:
            message = str(exc).lower()  # read here, never repeated
            # cyborgdb-core: "Failed to unwrap DEK ..."; cyborgdb-service: HTTP 401 "Wrong encryption key for index".
            if "unwrap" in message or "wrong encryption key" in message:
                return IndexKeyMismatch(
                    f"the index of tenant {keys.tenant_id!r} does not open with this master key; not retried"
                )
            return None

        return _retrying("load_index", keys.tenant_id, self._timeout_s, self._retry_budget_s, self._client.load_index,
                         name, keys.index_key, classify=wrong_key)

    def drop(self, keys: TenantKeys, generation: int = 1) -> bool:
        index = self.open(keys, generation=generation)
        if index is None:
            return False
        index.drop()
        return True
