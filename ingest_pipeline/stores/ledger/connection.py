"""The ledger's connection and transaction helper: bounded connections, timeouts, migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import psycopg
from psycopg.rows import class_row, dict_row

from ingest_pipeline.stores import locks


def read_rows(conn: psycopg.Connection, row_type: type, query: str, params) -> list:
    """The rows of `query` as `row_type` instances (a dataclass whose fields name the columns)."""
    with conn.cursor(row_factory=class_row(row_type)) as cursor:
        return cursor.execute(query, params).fetchall()


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("ingest_pipeline.stores") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class Database:
    """Opens the ledger's connections (every statement, lock wait and open transaction bounded) and migrates it.

    One instance is shared by the Ledger and its concerns (uploads, documents, chunks, quarantine, tenants)."""

    def __init__(
        self, dsn: str, *, statement_timeout_s: float = 120, lock_wait_s: float = 300,
        idle_in_transaction_s: float = 300, connect_timeout_s: int = 15,
    ):
        self.dsn = dsn
        self.statement_timeout_s = statement_timeout_s
        self.lock_wait_s = lock_wait_s
        self.idle_in_transaction_s = idle_in_transaction_s
        self.connect_timeout_s = connect_timeout_s

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection whose `with conn.transaction()` blocks commit or roll back as a unit.

        Every statement, row-lock wait and open transaction is bounded, and TCP keepalives notice a
        dead server, so a stuck connection fails the step (which retries) instead of hanging it.
        """
        options = (
            f"-c statement_timeout={int(self.statement_timeout_s * 1000)}"
            f" -c lock_timeout={int(self.statement_timeout_s * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(self.idle_in_transaction_s * 1000)}"
        )
        with psycopg.connect(
            self.dsn, row_factory=dict_row, autocommit=True, connect_timeout=self.connect_timeout_s,
            options=options, keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
        ) as conn:
            yield conn

    def migrate(self) -> list[int]:
        """Apply pending versioned migrations (idempotent, safe from several processes at once)."""
        applied = []
        with self.connect() as conn, conn.transaction():
            conn.execute(*locks.LEDGER_MIGRATIONS.call("pg_advisory_xact_lock"))
            # An index built on a large chunks table may take longer than the statement timeout of every connection.
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("CREATE SCHEMA IF NOT EXISTS ingest")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ingest.schema_migrations "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["version"] for row in conn.execute("SELECT version FROM ingest.schema_migrations")}
            for version, text in _migrations():
                if version not in done:
                    conn.execute(text)
                    conn.execute("INSERT INTO ingest.schema_migrations (version) VALUES (%s)", (version,))
                    applied.append(version)
        return applied

    def set_timeouts(self, conn: psycopg.Connection, seconds: float) -> None:
        """Bound `conn`'s lock waits and statements to `seconds` for the rest of its session."""
        milliseconds = str(int(seconds * 1000))
        conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                     (milliseconds, milliseconds))
