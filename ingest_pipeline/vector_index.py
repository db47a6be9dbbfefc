"""A tenant's encrypted CyborgDB index, embedded (cyborgdb-core on disk) or remote (cyborgdb-service).

Callers never name an index: a `TenantIndex` is opened for a tenant with that tenant's own index key,
so the search path has no way to reach another tenant's vectors.
"""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ingest_pipeline.core.crypto import TenantKeys
from ingest_pipeline.core.ids import index_name

METRIC = "cosine"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_CALL_TIMEOUT_S = 60.0


class IndexDimensionMismatch(ValueError):
    """The index was built for vectors of another size (a different embedding model)."""


class IndexKeyMismatch(ValueError):
    """The index exists but does not open with this tenant's index key (a different master key)."""


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


def _guarded(operation: str, tenant_id: str, call, *args, timeout_s: float | None = None, **kwargs):
    try:
        return _within(timeout_s, call, *args, **kwargs)
    except (IndexDimensionMismatch, IndexKeyMismatch):
        raise
    except Exception as exc:
        raise IndexUnavailable(
            f"CyborgDB {operation} for tenant {tenant_id!r} failed ({type(exc).__name__})",
            pending_call=exc.worker if isinstance(exc, CallTimedOut) else None,
        ) from None


class TenantIndex:
    """Upsert, delete, query and count one tenant's vectors; the same calls on either backend."""

    def __init__(
        self, tenant_id: str, handle, index_key: bytes, embedded: bool, generation: int = 1,
        timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S,
    ):
        self.tenant_id = tenant_id
        self.generation = generation
        self._handle = handle
        self._key = index_key
        self._embedded = embedded
        self._timeout_s = timeout_s

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
                        **kwargs, **self._kw())

    def upsert(self, items: list[dict]) -> None:
        if items:
            self._call("upsert", "upsert", items)

    def delete(self, ids: list[str]) -> None:
        if ids:
            self._call("delete", "delete", list(ids))

    def query(self, vectors: np.ndarray, top_k: int) -> list[list[dict]]:
        """Nearest neighbours for each row of `vectors`: lists of {"id", "distance"}."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        empty = [[] for _ in range(len(vectors))]
        if self._embedded and self.count() == 0:  # an empty embedded index cannot be queried
            return empty
        try:
            results = self._call("query", "query", vectors, top_k=top_k, include=["distance"])
        except IndexUnavailable:
            if self.count() == 0:
                return empty
            raise
        if results and isinstance(results[0], dict):
            results = [results]
        return [list(r) for r in results]

    def list_ids(self) -> set[str]:
        return set(self._call("list_ids", "list_ids"))

    def count(self) -> int:
        if self._embedded:
            return int(self._call("count", "get_num_vectors"))
        return len(self.list_ids())

    def drop(self) -> None:
        self._call("delete_index", "delete_index")


def check_service_url(url: str) -> None:
    """Refuse a CyborgDB URL that would send index keys and vectors in clear over a network."""
    parsed = urlparse(url.strip())
    scheme, host = parsed.scheme.lower(), (parsed.hostname or "").lower()
    if scheme not in {"http", "https"} or not host:
        raise ValueError(f"INGEST_CYBORGDB_URL must be an http(s) URL with a host, got scheme {scheme!r}")
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing plain http to CyborgDB at {host}: index keys and vectors would cross the network "
            "in clear; use https://"
        )


class CyborgIndexes:
    """Opens tenants' indexes on one CyborgDB backend."""

    def __init__(
        self, *, storage_dir: str | Path | None = None, url: str = "", api_key: str = "",
        timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S,
    ):
        self._timeout_s = timeout_s
        if url:
            import cyborgdb

            check_service_url(url)
            self._client = cyborgdb.Client(base_url=url, api_key=api_key or None)
            self._embedded = False
        else:
            import cyborgdb_core

            Path(storage_dir).mkdir(parents=True, exist_ok=True)
            self._client = cyborgdb_core.Client(storage_config=cyborgdb_core.StorageConfig.disk(str(storage_dir)))
            self._embedded = True

    @property
    def backend(self) -> str:
        return "cyborgdb-core (embedded)" if self._embedded else "cyborgdb-service"

    def _names(self, tenant_id: str) -> set[str]:
        return set(_guarded("list_indexes", tenant_id, self._client.list_indexes, timeout_s=self._timeout_s))

    def exists(self, tenant_id: str, generation: int = 1) -> bool:
        return index_name(tenant_id, generation) in self._names(tenant_id)

    def open(
        self, keys: TenantKeys, dimension: int | None = None, create: bool = False, generation: int = 1,
    ) -> TenantIndex | None:
        """One generation of the tenant's index, created when `create` is set; None when it does not exist."""
        name = index_name(keys.tenant_id, generation)
        if name in self._names(keys.tenant_id):
            handle = self._load(name, keys)
        elif create:
            try:
                handle = _within(self._timeout_s, self._client.create_index, name, keys.index_key,
                                 dimension=dimension, metric=METRIC)
            except Exception:
                # Another writer may have created it between the listing and the create.
                if name not in self._names(keys.tenant_id):
                    raise IndexUnavailable(f"CyborgDB create_index for tenant {keys.tenant_id!r} failed") from None
                handle = self._load(name, keys)
        else:
            return None
        index = TenantIndex(keys.tenant_id, handle, keys.index_key, self._embedded, generation, self._timeout_s)
        if dimension:
            index.check_dimension(dimension)
        return index

    def _load(self, name: str, keys: TenantKeys):
        try:
            return _within(self._timeout_s, self._client.load_index, name, keys.index_key)
        except Exception as exc:
            message = str(exc).lower()
            # cyborgdb-core: "Failed to unwrap DEK ..."; cyborgdb-service: "Wrong encryption key for index".
            if "unwrap" in message or "wrong encryption key" in message:
                raise IndexKeyMismatch(
                    f"the index of tenant {keys.tenant_id!r} does not open with this master key"
                ) from None
            raise IndexUnavailable(
                f"CyborgDB load_index for tenant {keys.tenant_id!r} failed ({type(exc).__name__})"
            ) from None

    def drop(self, keys: TenantKeys, generation: int = 1) -> bool:
        index = self.open(keys, generation=generation)
        if index is None:
            return False
        index.drop()
        return True
