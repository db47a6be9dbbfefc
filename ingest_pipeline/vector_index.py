"""A tenant's encrypted CyborgDB index, embedded (cyborgdb-core on disk) or remote (cyborgdb-service).

Callers never name an index: a `TenantIndex` is opened for a tenant with that tenant's own index key,
so the search path has no way to reach another tenant's vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ingest_pipeline.core.crypto import TenantKeys
from ingest_pipeline.core.ids import index_name

METRIC = "cosine"


class IndexDimensionMismatch(ValueError):
    """The index was built for vectors of another size (a different embedding model)."""


class IndexKeyMismatch(ValueError):
    """The index exists but does not open with this tenant's index key (a different master key)."""


class TenantIndex:
    """Upsert, delete, query and count one tenant's vectors; the same calls on either backend."""

    def __init__(self, tenant_id: str, handle, index_key: bytes, embedded: bool):
        self.tenant_id = tenant_id
        self._handle = handle
        self._key = index_key
        self._embedded = embedded

    def _kw(self) -> dict:
        return {"index_key": self._key} if self._embedded else {}

    def check_dimension(self, dimension: int) -> None:
        actual = int(self._handle.dimension or 0)
        if actual and actual != dimension:
            raise IndexDimensionMismatch(
                f"index of tenant {self.tenant_id!r} holds {actual}-d vectors, the model makes {dimension}-d"
            )

    def upsert(self, items: list[dict]) -> None:
        if items:
            self._handle.upsert(items, **self._kw())

    def delete(self, ids: list[str]) -> None:
        if ids:
            self._handle.delete(list(ids), **self._kw())

    def query(self, vectors: np.ndarray, top_k: int) -> list[list[dict]]:
        """Nearest neighbours for each row of `vectors`: lists of {"id", "distance"}."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if self.count() == 0:
            return [[] for _ in range(len(vectors))]
        results = self._handle.query(vectors, top_k=top_k, include=["distance"], **self._kw())
        if results and isinstance(results[0], dict):
            results = [results]
        return [list(r) for r in results]

    def list_ids(self) -> set[str]:
        return set(self._handle.list_ids(**self._kw()))

    def count(self) -> int:
        if self._embedded:
            return int(self._handle.get_num_vectors(index_key=self._key))
        return len(self._handle.list_ids())

    def get_contents(self, ids: list[str]) -> dict[str, bytes]:
        items = self._handle.get(list(ids), include=["contents"], **self._kw())
        return {item["id"]: item.get("contents") for item in items}


class CyborgIndexes:
    """Opens tenants' indexes on one CyborgDB backend."""

    def __init__(self, *, storage_dir: str | Path | None = None, url: str = "", api_key: str = ""):
        if url:
            import cyborgdb

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

    def exists(self, tenant_id: str) -> bool:
        return index_name(tenant_id) in set(self._client.list_indexes())

    def open(self, keys: TenantKeys, dimension: int | None = None, create: bool = False) -> TenantIndex | None:
        """The tenant's index, created when `create` is set; None when it does not exist yet."""
        name = index_name(keys.tenant_id)
        if name in set(self._client.list_indexes()):
            handle = self._load(name, keys)
        elif create:
            try:
                handle = self._client.create_index(name, keys.index_key, dimension=dimension, metric=METRIC)
            except Exception:
                # Another writer may have created it between the listing and the create.
                if name not in set(self._client.list_indexes()):
                    raise
                handle = self._load(name, keys)
        else:
            return None
        index = TenantIndex(keys.tenant_id, handle, keys.index_key, self._embedded)
        if dimension:
            index.check_dimension(dimension)
        return index

    def _load(self, name: str, keys: TenantKeys):
        try:
            return self._client.load_index(name, keys.index_key)
        except Exception as exc:
            message = str(exc).lower()
            # cyborgdb-core: "Failed to unwrap DEK ..."; cyborgdb-service: "Wrong encryption key for index".
            if "unwrap" in message or "wrong encryption key" in message:
                raise IndexKeyMismatch(
                    f"the index of tenant {keys.tenant_id!r} does not open with this master key"
                ) from None
            raise

    def drop(self, keys: TenantKeys) -> bool:
        index = self.open(keys)
        if index is None:
            return False
        if self._embedded:
            index._handle.delete_index(index_key=keys.index_key)
        else:
            index._handle.delete_index()
        return True
