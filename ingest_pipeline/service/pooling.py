"""Connections kept open between requests: the service opens the ledger and the key vault once per process, not
once per statement (a new PostgreSQL connection costs a backend start, several ms)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import ClassVar

import psycopg
from psycopg.pq import TransactionStatus

from ingest_pipeline.stores.key_vault import KeyVault
from ingest_pipeline.stores.ledger import Ledger


class ConnectionPool:
    """Idle connections reused last-in first-out. A connection is given back only when it is healthy and outside a
    transaction; a connection error drops every idle connection of every pool (after a server restart all of them
    are dead, and the ledger and the key vault may share a server), so the next request connects anew: recovery
    needs no restart."""

    _all: ClassVar[weakref.WeakSet] = weakref.WeakSet()

    def __init__(self, opener: Callable[[], AbstractContextManager[psycopg.Connection]], max_idle: int = 16):
        self._opener = opener
        self._max_idle = max_idle
        self._idle: list[tuple[AbstractContextManager, psycopg.Connection]] = []
        self._lock = threading.Lock()
        ConnectionPool._all.add(self)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            entry = self._idle.pop() if self._idle else None
        if entry is None or entry[1].closed or entry[1].broken:
            opener = self._opener()
            entry = (opener, opener.__enter__())
        opener, conn = entry
        try:
            yield conn
        except BaseException as exc:
            self._close(entry)
            if isinstance(exc, psycopg.OperationalError):
                for pool in list(ConnectionPool._all):
                    pool.clear()
            raise
        if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
            self._close(entry)
            return
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(entry)
                return
        self._close(entry)

    @staticmethod
    def _close(entry) -> None:
        with suppress(Exception):  # a dead connection has nothing left to close
            entry[0].__exit__(None, None, None)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for entry in idle:
            self._close(entry)


class PooledLedger(Ledger):
    """The ledger with its connections pooled (same timeouts as `Database.connect`)."""

    def __init__(self, dsn: str, **options):
        super().__init__(dsn, **options)
        self._pool = ConnectionPool(lambda: Ledger.connect(self))

    def connect(self) -> AbstractContextManager[psycopg.Connection]:
        return self._pool.connect()


class PooledKeyVault(KeyVault):
    """The key vault with its connections pooled."""

    def __init__(self, vault: KeyVault):
        self.__dict__.update(vault.__dict__)
        self._pool = ConnectionPool(lambda: KeyVault.connect(self))

    def connect(self) -> AbstractContextManager[psycopg.Connection]:
        return self._pool.connect()
