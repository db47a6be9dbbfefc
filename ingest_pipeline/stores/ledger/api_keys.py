"""API keys of the search service: each bound to one tenant, stored only as a hash, looked up by its id.

A key reads `ipk_<key id>_<secret>`: the id (64 random bits, hex) is not secret and names the row; the secret is
256 random bits. The row keeps SHA-256 of the whole key, compared in constant time. Every check reads Postgres
(no cache), so a revoke takes effect at once in every process that checks keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import psycopg

from ingest_pipeline.stores.ledger.connection import Database, read_rows
from ingest_pipeline.stores.ledger.rows import ApiKey, columns

PREFIX = "ipk"
KEY_PATTERN = re.compile(r"ipk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
REVOKED, ERASED = "revoked", "erased"
# last_used_at is written at most this often per key: a search never waits on a write per request.
LAST_USED_RESOLUTION_S = 60
_SELECT = ", ".join(columns(ApiKey))


class UnknownApiKey(LookupError):
    """No key has this id."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: its row and the key itself (shown once, never stored)."""

    row: ApiKey
    key: str


class ApiKeys:
    """Create, list, revoke and check API keys (`ingest.api_keys`)."""

    def __init__(self, db: Database):
        self.db = db

    def create(self, tenant_id: str, label: str | None = None, rate_per_s: float | None = None) -> IssuedKey:
        """A new random key for the tenant, with an optional label and its own rate (requests per second)."""
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        key = f"{PREFIX}_{key_id}_{secret}"
        with self.db.connect() as conn, conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO ingest.api_keys (key_id, tenant_id, label, key_hash, rate_per_s)"
                " VALUES (%s, %s, %s, %s, %s)",
                (key_id, tenant_id, label, _digest(key), rate_per_s),
            )
            row = read_rows(conn, ApiKey, f"SELECT {_SELECT} FROM ingest.api_keys WHERE key_id = %s", (key_id,))[0]
        return IssuedKey(row, key)

    def listed(self, tenant_id: str | None = None) -> list[ApiKey]:
        """Every key's row (the tenant's only, when given), oldest first; never a key or its hash."""
        with self.db.connect() as conn:
            return read_rows(
                conn, ApiKey,
                f"SELECT {_SELECT} FROM ingest.api_keys WHERE %(t)s::text IS NULL OR tenant_id = %(t)s"
                " ORDER BY created_at, key_id",
                {"t": tenant_id},
            )

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key (at once, for every process); revoking a revoked key again changes nothing."""
        with self.db.connect() as conn:
            conn.execute(
                "UPDATE ingest.api_keys SET revoked_at = now(), revoked_reason = %s"
                " WHERE key_id = %s AND revoked_at IS NULL",
                (REVOKED, key_id),
            )
            rows = read_rows(conn, ApiKey, f"SELECT {_SELECT} FROM ingest.api_keys WHERE key_id = %s", (key_id,))
        if not rows:
            raise UnknownApiKey(f"no API key has id {key_id!r}")
        return rows[0]

    @staticmethod
    def revoke_tenant(conn: psycopg.Connection, tenant_id: str) -> int:
        """Revoke every key of an erased tenant, on the erasure's connection; how many were live."""
        return conn.execute(
            "UPDATE ingest.api_keys SET revoked_at = now(), revoked_reason = %s"
            " WHERE tenant_id = %s AND revoked_at IS NULL",
            (ERASED, tenant_id),
        ).rowcount

    def check(self, key: str) -> ApiKey | None:
        """The row of this key if it is one we issued (revoked or not: the caller decides), else None.

        The key's id selects the row; its hash is compared in constant time. The caller must refuse a revoked
        row. Records the key's use, at most once a minute."""
        match = KEY_PATTERN.fullmatch(key)
        if match is None:
            return None
        with self.db.connect() as conn:
            found = conn.execute(
                "SELECT key_hash, (revoked_at IS NULL AND (last_used_at IS NULL"
                f" OR last_used_at < now() - interval '{LAST_USED_RESOLUTION_S} seconds')) AS stale_use,"
                f" {_SELECT} FROM ingest.api_keys WHERE key_id = %s",
                (match.group(1),),
            ).fetchone()
            if found is None or not hmac.compare_digest(bytes(found.pop("key_hash")), _digest(key)):
                return None
            if found.pop("stale_use"):
                conn.execute("UPDATE ingest.api_keys SET last_used_at = now() WHERE key_id = %s", (match.group(1),))
        return ApiKey(**found)
